"""The OpenAPI document and an interactive Swagger UI page. The page's scripts and styles come from the
swagger-ui-bundle-v2 package installed with the gateway (no CDN), so it works offline."""
from __future__ import annotations

from flask import Blueprint, Response, abort, current_app, jsonify, send_from_directory, url_for
from swagger_ui_bundle import swagger_ui_path

from cortex_web.blueprints import agents, alerts, batch, chat, documents, models, prompts, reports, training, vectors
from cortex_web.openapi import build_spec

bp = Blueprint("docs", __name__, url_prefix="/api/v1")

BLUEPRINT_BODIES = {**models.REQUEST_BODIES, **training.REQUEST_BODIES, **vectors.REQUEST_BODIES,
                    **documents.REQUEST_BODIES, **chat.REQUEST_BODIES, **batch.REQUEST_BODIES,
                    **alerts.REQUEST_BODIES, **reports.REQUEST_BODIES,
                    **prompts.REQUEST_BODIES, **agents.REQUEST_BODIES}
# Only the files the page loads: the rest of the bundle (source maps, its demo index.html) is not served.
ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png")
# Swagger UI 5 reads OpenAPI 3.1, which the document is. Requests from "Try it out" carry the key
# given under "Authorize".
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Cortex API</title>
<link rel="stylesheet" href="{css}"><link rel="icon" type="image/png" href="{icon}"></head>
<body><div id="swagger-ui"></div>
<script src="{js}"></script>
<script>
window.ui = SwaggerUIBundle({{url: "{spec}", dom_id: "#swagger-ui", deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout"}});
</script>
<noscript>The machine-readable document is at <a href="{spec}">{spec}</a>.</noscript>
</body></html>
"""


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI 3.1 document of this gateway."""
    return jsonify(build_spec(current_app, BLUEPRINT_BODIES))


@bp.get("/docs")
def docs_page() -> Response:
    """Interactive documentation (Swagger UI) of every operation."""
    page = PAGE.format(css=url_for("docs.docs_asset", filename="swagger-ui.css"),
                       js=url_for("docs.docs_asset", filename="swagger-ui-bundle.js"),
                       icon=url_for("docs.docs_asset", filename="favicon-32x32.png"),
                       spec=url_for("docs.openapi_json"))
    return Response(page, mimetype="text/html")


@bp.get("/docs/assets/<path:filename>")
def docs_asset(filename: str) -> Response:
    """A Swagger UI file the docs page loads."""
    if filename not in ASSETS:
        abort(404)
    return send_from_directory(swagger_ui_path, filename, max_age=86400)
