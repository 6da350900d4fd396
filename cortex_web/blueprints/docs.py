"""The OpenAPI document and a self-contained browsable page (no CDN: it works offline)."""
from __future__ import annotations

from html import escape

from flask import Blueprint, Response, current_app, jsonify

from cortex_web.blueprints import chat, documents, models, training, vectors
from cortex_web.openapi import build_spec

bp = Blueprint("docs", __name__, url_prefix="/api/v1")

BLUEPRINT_BODIES = {**models.REQUEST_BODIES, **training.REQUEST_BODIES, **vectors.REQUEST_BODIES,
                    **documents.REQUEST_BODIES, **chat.REQUEST_BODIES}


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI 3 document of this gateway."""
    return jsonify(build_spec(current_app, BLUEPRINT_BODIES))


@bp.get("/docs")
def docs_page() -> Response:
    """A browsable list of every operation."""
    spec = build_spec(current_app, BLUEPRINT_BODIES)
    rows = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            auth = "key" if "security" in operation else "public"
            rows.append(f"<tr><td><code>{method.upper()}</code></td><td><code>{escape(path)}</code></td>"
                        f"<td>{escape(operation['summary'])}</td><td>{auth}</td></tr>")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Cortex API</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:4px 12px;border-bottom:1px solid #ddd}"
        "</style></head><body><h1>Cortex API</h1><p>Machine-readable: "
        "<a href='/api/v1/openapi.json'>/api/v1/openapi.json</a>. Authenticate with "
        "<code>Authorization: Bearer &lt;key&gt;</code>.</p><table><tr><th>Method</th><th>Path</th>"
        "<th>What it does</th><th>Auth</th></tr>" + "".join(rows) + "</table></body></html>"
    )
    return Response(page, mimetype="text/html")
