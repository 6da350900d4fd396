"""OpenAI-compatible routes: GET /v1/models, POST /v1/embeddings, POST /v1/chat/completions (with
`stream: true` as Server-Sent Events), served by Cortex's own models, so the official OpenAI SDK and
LangChain's OpenAI classes work against Cortex with `base_url=<gateway>/v1` and a Cortex key.

Authenticated with Cortex keys (`Authorization: Bearer <key>`, as the SDK sends it), rate-limited, audited
and recorded in the usage ledger like /predict; errors in OpenAI's shape
(`{"error": {"message", "type", "param", "code"}}`), on these routes only. The translation lives in
cortex_web/openai_translation.py.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, stream_with_context
from werkzeug.exceptions import HTTPException

from cortex_tasks.core.auth.roles import PREDICT, READ
from cortex_tasks.core.errors import CortexError
from cortex_web import openai_translation as compatible
from cortex_web.auth import in_request_tenant, optional_principal, require
from cortex_web.errors import ApiError
from cortex_web.limits import limit_prediction
from cortex_web.openai_translation import ChatCompletionRequest, EmbeddingsRequest, parse_body

log = logging.getLogger(__name__)
bp = Blueprint("openai_compatible", __name__, url_prefix="/v1")


@bp.before_request
def _authenticate() -> None:
    # Outside /api/v1, so the app's own check does not run here; a bad key is a 401 in OpenAI's shape.
    if optional_principal() is None:
        raise ApiError(401, "missing_api_key", "Send a Cortex API key as 'Authorization: Bearer <key>' "
                                               "(the SDK's api_key).", headers={"WWW-Authenticate": "Bearer"})


@bp.errorhandler(CortexError)
def _openai_error(error: CortexError) -> Response:
    body, status, headers = compatible.openai_error(error)
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers)
    return response


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> Response:
    return _openai_error(ApiError(error.code or 500, "invalid_request" if (error.code or 500) < 500 else
                                  "server_error", error.description or error.name))


@bp.errorhandler(Exception)
def _unexpected(error: Exception) -> Response:
    log.exception("unhandled error")
    return _openai_error(ApiError(500, "internal_error", "Something went wrong on our side; it has been logged."))


@bp.get("/models")
@require(READ)
def list_models() -> Response:
    """The embedding and generation models this key may use, as OpenAI lists models."""
    return jsonify(compatible.model_list())


@bp.post("/embeddings")
@require(PREDICT)
@limit_prediction
def create_embeddings() -> Response:
    """Embeddings of a text or a list of texts by a Cortex embedding model (float or base64)."""
    return jsonify(compatible.embeddings(parse_body(EmbeddingsRequest)))


@bp.post("/chat/completions")
@require(PREDICT)
@limit_prediction
def create_chat_completion() -> Response:
    """A chat completion by Cortex's local generator or a configured OpenAI model; `stream: true` answers
    Server-Sent Events (`data: {chunk}` lines, then `data: [DONE]`)."""
    request = parse_body(ChatCompletionRequest)
    if not request.stream:
        return jsonify(compatible.chat_completion(request))
    chunks = compatible.chat_completion_chunks(request)  # refusals are raised here, before the stream starts

    def written() -> Iterator[str]:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"
            if "error" in chunk:
                return
        yield "data: [DONE]\n\n"

    return Response(stream_with_context(in_request_tenant(_closing(written(), chunks))),
                    mimetype="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _closing(body: Iterator[str], source: Any) -> Iterator[str]:
    """The body, closing the chunks' source when it ends or the client goes away (the generation stops)."""
    try:
        yield from body
    finally:
        source.close()
