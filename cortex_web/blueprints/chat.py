"""Chat with memory: POST/GET/DELETE /api/v1/chat/{session_id}.

A session is created by the first message to a new id and belongs to that key; for any other key it does
not exist (404). The reply is computed by `cortex.chat.reply` on the gpu queue; the gateway waits for it
within the wait budget (default 30 s, `wait` in the body) and otherwise answers 202 with the job's URL.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, url_for
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cortex_tasks.core.auth.permissions import check_allowed
from cortex_tasks.core.auth.roles import PREDICT
from cortex_tasks.core.chat import history
from cortex_tasks.core.chat.config import chat_config
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import ChatReplyMessage
from cortex_tasks.core.jobs.store import NewJob
from cortex_tasks.core.openai.availability import refuse_unavailable_openai
from cortex_tasks.core.openai.config import CHAT_MODELS
from cortex_tasks.core.prompts import service as prompts
from cortex_tasks.core.queues import GPU, priority_of
from cortex_tasks.core.request_fields import WaitSeconds
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.validation.generation import generation_params
from cortex_web.audit import audited
from cortex_web.auth import current_principal, require
from cortex_web.dispatch import submit_and_wait
from cortex_web.errors import ApiError
from cortex_web.limits import limit_model_work
from cortex_web.request_body import CONTROL_CHARACTERS, parse_body

bp = Blueprint("chat", __name__, url_prefix="/api/v1")
LOCAL_MODEL = "SmolLM2-135M-Instruct"
CHAT_MODEL_NAMES = (LOCAL_MODEL, *CHAT_MODELS)
# A reply's status codes for what a worker refuses (the rest of the worker's refusals are the input's fault).
STATUS_BY_CODE = {"rate_limited": 429, "budget_exceeded": 402, "openai_not_configured": 503,
                  "model_error": 502, "job_failed": 502, "session_busy": 409}


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    message: str = Field(min_length=1, max_length=4000)
    model: str | None = Field(default=None, max_length=128)
    system: str | None = Field(default=None, max_length=4000)
    params: dict[str, Any] = Field(default_factory=dict)
    priority: str = Field(default="normal", pattern="^(high|normal|low)$")
    wait: WaitSeconds = Field(default=None, ge=0, le=120)
    # The system text from a registry prompt (`name@version`, or `name` = its production version).
    prompt: str | None = Field(default=None, max_length=160)
    prompt_variables: dict[str, Any] = Field(default_factory=dict)

    @field_validator("message", "system")
    @classmethod
    def _plain_text(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or CONTROL_CHARACTERS.search(value)):
            raise ValueError("must be non-blank text without control characters")
        return value


REQUEST_BODIES = {("post", "/api/v1/chat/{session_id}"): ChatRequest}


def _checked_session_id(session_id: str) -> str:
    if not history.valid_session_id(session_id):
        raise ApiError(422, "invalid_session_id", "A session id is 1 to 128 letters, digits, '-' or '_', "
                       "starting with a letter or digit.", {"session_id": session_id[:200]})
    return session_id


def _owned_session(session_id: str) -> str:
    try:
        history.check_owner(_checked_session_id(session_id), current_principal().key_id)
    except history.SessionNotFound:
        raise ApiError(404, "unknown_session", f"There is no chat session {session_id!r} for this key.") from None
    return session_id


@bp.post("/chat/<session_id>")
@require(PREDICT)
@limit_model_work
def chat(session_id: str) -> tuple[Response, int]:
    """Send a message; the model answers with the session's earlier turns as memory."""
    _checked_session_id(session_id)
    body = parse_body(ChatRequest, get_settings().max_json_depth)
    config = chat_config()
    model = body.model or config.default_model
    if model not in CHAT_MODEL_NAMES:
        raise ApiError(404, "unknown_model", f"Model {model!r} cannot chat.", {"valid": list(CHAT_MODEL_NAMES)})
    # A chat turn is a generation: a key limited to tasks must have `generate`, and to models, this one.
    check_allowed(current_principal(), "generate", model)
    generation_params(body.params)  # bad params raise JobInputError: a 422 naming the parameter
    refuse_unavailable_openai(model)
    system, prompt = body.system, None
    if body.prompt is not None:
        if body.system is not None:
            raise ApiError(422, "invalid_request", "Give `system` or `prompt`, not both.")
        resolved = prompts.resolve(body.prompt)
        system, prompt = resolved.render(body.prompt_variables), resolved.as_record()
    elif body.prompt_variables:
        raise ApiError(422, "invalid_request", "`prompt_variables` needs a `prompt`.")
    owner = current_principal().key_id
    try:
        history.claim_session(session_id, owner)
    except history.SessionNotFound:
        raise ApiError(404, "unknown_session", f"There is no chat session {session_id!r} for this key.") from None
    priority = priority_of(body.priority)
    wait = config.default_wait_seconds if body.wait is None else body.wait
    submitted = submit_and_wait(
        NewJob(owner=owner, kind="chat", task="chat", model=model, priority=priority, total=1),
        task_names.CHAT_REPLY, GPU,
        lambda job_id, reply_to: ChatReplyMessage(job_id=job_id, reply_to=reply_to, session_id=session_id,
                                                  owner=owner, message=body.message, model=model,
                                                  system=system, params=body.params, prompt=prompt),
        wait)
    outcome = submitted.outcome
    if outcome is None:
        return jsonify({"job_id": submitted.job_id, "status": "queued", "session_id": session_id,
                        "status_url": url_for("jobs.show_job", job_id=submitted.job_id)}), 202
    if outcome["status"] != "succeeded":
        error = outcome.get("error") or {"code": "job_failed", "message": "the reply failed"}
        code = error.get("code", "job_failed")
        raise ApiError(STATUS_BY_CODE.get(code, 422), code, error.get("message", "the reply failed"),
                       {"job_id": submitted.job_id, **(error.get("details") or {})})
    return jsonify({"job_id": submitted.job_id, **outcome["result"]}), 200


@bp.get("/chat/<session_id>")
@require(PREDICT)
def chat_history(session_id: str) -> Response:
    """Every message of the session, oldest first."""
    _owned_session(session_id)
    messages = [{"role": m.role, "content": m.content, "model": m.model, "created_at": m.created_at.isoformat()}
                for m in history.all_messages(session_id)]
    return jsonify({"session_id": session_id, "messages": messages, "turns": len(messages) // 2})


@bp.delete("/chat/<session_id>")
@require(PREDICT)
@audited("chat.delete")
def clear_chat(session_id: str) -> Response:
    """Forget the session and its messages (the id becomes free again)."""
    _owned_session(session_id)
    return jsonify({"session_id": session_id, "deleted": True,
                    "deleted_messages": history.delete_session(session_id)})
