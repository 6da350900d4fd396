"""The OpenAPI 3 document, built from the app's own URL map so every route is listed, with the request
bodies the gateway validates."""
from __future__ import annotations

import re
from typing import Any

from flask import Flask

from cortex_web.schemas import CreateKeyRequest, PipelineRequest, PredictRequest

REQUEST_BODIES: dict[tuple[str, str], type] = {
    ("post", "/api/v1/predict"): PredictRequest,
    ("post", "/api/v1/predict/batch"): PredictRequest,
    ("post", "/api/v1/predict/stream"): PredictRequest,
    ("post", "/api/v1/predict/pipeline"): PipelineRequest,
    ("post", "/api/v1/keys"): CreateKeyRequest,
}
PUBLIC_PATHS = {"/health", "/ready", "/metrics", "/api/v1/openapi.json", "/api/v1/docs"}
ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "object", "properties": {
        "code": {"type": "string"}, "message": {"type": "string"}, "details": {"type": "object"}}}},
}


def build_spec(app: Flask, blueprint_bodies: dict[tuple[str, str], type] | None = None) -> dict[str, Any]:
    """`blueprint_bodies`: the request models the blueprints declare, by (method, path)."""
    bodies = {**REQUEST_BODIES, **(blueprint_bodies or {})}
    paths: dict[str, dict[str, Any]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        view = app.view_functions[rule.endpoint]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation: dict[str, Any] = {
                "operationId": rule.endpoint,
                "summary": (view.__doc__ or rule.endpoint).strip().splitlines()[0],
                "parameters": [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                               for name in rule.arguments],
                "responses": {"200": {"description": "OK"},
                              "4XX": {"description": "Client error",
                                      "content": {"application/json": {"schema": ERROR_SCHEMA}}}},
            }
            body_model = bodies.get((method.lower(), path))
            if body_model is not None:
                operation["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": body_model.model_json_schema()}}}
            if path not in PUBLIC_PATHS:
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
            paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": "Cortex API", "version": "1.0.0",
                 "description": "Submit AI jobs, poll or wait for results. See API.md for the contract."},
        "servers": [{"url": "/"}],
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
        "paths": dict(sorted(paths.items())),
    }
