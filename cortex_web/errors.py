"""JSON errors with a stable code: every failure a client can cause is a 4xx in this shape."""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from cortex_tasks.core import dependencies
from cortex_tasks.core.auth.oauth import OAuthError
from cortex_tasks.core.errors import CortexError

log = logging.getLogger(__name__)


class ApiError(CortexError):
    """An error the gateway itself raises; its status comes first because a view always names one."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(code, message, details, status=status, headers=headers)


def error_response(status: int, code: str, message: str, details: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
               429: "rate_limited"}


def register_error_handlers(app: Flask) -> None:
    # The one mapping of Cortex's errors (the gateway's, the registry's, the stores', bad job input) to HTTP.
    @app.errorhandler(CortexError)
    def _cortex_error(error: CortexError) -> Response:
        return error_response(error.status, error.code, error.message, error.public_details(), error.headers)

    # The token endpoint answers in RFC 6749 §5.2's shape, which OAuth2 client libraries parse: there the
    # error is a string, so the two shapes cannot share the `error` field.
    @app.errorhandler(OAuthError)
    def _oauth_error(error: OAuthError) -> Response:
        response = jsonify({"error": error.code, "error_description": error.message})
        response.status_code = error.status
        response.headers.update(error.headers)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        message = error.description or error.name
        if status == 413:
            limit = request.max_content_length if request else app.config["MAX_CONTENT_LENGTH"]
            message = f"The request body is larger than {limit} bytes."
        return error_response(status, code, message)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        # Redis, PostgreSQL or the message broker refused, lost the connection or did not answer in time: a
        # 503 to retry, naming which; a gated one (Redis, PostgreSQL) is refused at once until it is back.
        dependency = dependencies.failed_dependency(error)
        if dependency is not None:
            dependencies.trip(dependency, error)
            log.warning("%s unavailable: %s: %s", dependency, type(error).__name__, error)
            unavailable = dependencies.DependencyUnavailable(dependency)
            return error_response(unavailable.status, unavailable.code, unavailable.message,
                                  unavailable.details, unavailable.headers)
        log.exception("unhandled error")
        return error_response(500, "internal_error", "Something went wrong on our side; it has been logged.")
