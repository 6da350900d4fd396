"""Alerts and alert channels (docs/alerts.md).

- GET /api/v1/alerts (reader+): the tenant's alerts, newest first; ?source= or ?stream=, ?rule=, ?state=, pages.
- GET /api/v1/alerts/{id} (reader+): one alert with its group and the deliveries of its notices.
- POST /api/v1/alerts/{id}/acknowledge and /resolve (inference_user+): someone is on it / it is over.
  Acknowledging is an operational act, not configuration: whoever may run jobs may answer an alert about
  them, a reader may only look.
- POST/GET /api/v1/alert-channels, DELETE /api/v1/alert-channels/{name} (model_admin): where alerts go.
  Channel targets are secrets (a Slack webhook URL is its own credential) and addresses: admin only.
"""
from __future__ import annotations

import re
from typing import Any, Literal

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field

from cortex_tasks.core.alerting import storage
from cortex_tasks.core.auth.roles import ADMIN, PREDICT, READ
from cortex_tasks.core.settings import get_settings
from cortex_web.audit import audited
from cortex_web.auth import current_principal, require
from cortex_web.errors import ApiError
from cortex_web.request_body import parse_body, positive_int_arg

bp = Blueprint("alerts", __name__, url_prefix="/api/v1")
MAX_PAGE_SIZE = 200
FILTER_VALUE = re.compile(r"[^\x00-\x1f]{1,160}")


# What the document states of a channel (storage.check_webhook_url, storage.EMAIL), so that a client (and
# schemathesis) can tell a good body from a bad one: a webhook takes a URL of a named host (addresses of
# Cortex's own network are still refused, with 422), an e-mail channel its recipients.
URL_PATTERN = r"^https?://[A-Za-z][A-Za-z0-9.-]{0,252}(:[1-9][0-9]{0,3})?(/[!-~]{0,1000})?$"
EMAIL_PATTERN = r"^[^@\s,;<>\x00-\x1f\x7f]{1,64}@[A-Za-z0-9][A-Za-z0-9.-]{0,200}\.[A-Za-z]{2,63}$"


def _one_kind_at_a_time(schema: dict[str, Any]) -> None:
    properties = schema.pop("properties")
    schema.pop("required", None)
    schema.pop("additionalProperties", None)  # each shape says it of its own fields
    common = {"name": properties["name"], "default": properties["default"]}
    schema["anyOf"] = [
        {"type": "object", "title": "WebhookChannel", "additionalProperties": False,
         "required": ["name", "kind", "url"],
         "properties": {**common, "kind": {"const": "webhook"},
                        "url": {"type": "string", "pattern": URL_PATTERN, "maxLength": 2048,
                                "description": properties["url"].get("description", "")}}},
        {"type": "object", "title": "EmailChannel", "additionalProperties": False,
         "required": ["name", "kind", "recipients"],
         "properties": {**common, "kind": {"const": "email"},
                        "recipients": {"type": "array", "minItems": 1, "maxItems": storage.MAX_RECIPIENTS,
                                       "items": {"type": "string", "pattern": EMAIL_PATTERN},
                                       "description": properties["recipients"].get("description", "")}}}]


class CreateChannelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_one_kind_at_a_time)

    name: str = Field(pattern=f"^{storage.CHANNEL_NAME.pattern}$", description="Unique in the tenant; alerts name it.")
    kind: Literal["webhook", "email"]
    url: str | None = Field(default=None, max_length=2048, description="webhook: a Slack-compatible incoming webhook.")
    recipients: list[str] | None = Field(default=None, max_length=storage.MAX_RECIPIENTS,
                                         description="email: the addresses (SMTP must be configured).")
    default: bool = Field(default=True, description="Receives every alert that names no channel.")


REQUEST_BODIES: dict[tuple[str, str], type[BaseModel]] = {("post", "/api/v1/alert-channels"): CreateChannelRequest}


def _filter(name: str) -> str | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if not FILTER_VALUE.fullmatch(raw):
        raise ApiError(422, "invalid_query", f"?{name}= must be 1..160 printable characters.")
    return raw


@bp.get("/alerts")
@require(READ)
def list_alerts() -> Response:
    """The tenant's alerts, newest first: ?source= (cortex, stream:<name>) or ?stream=<name>, ?rule=,
    ?state= (open|acknowledged|resolved), ?page= and ?size= (at most 200, default 50)."""
    source, stream = _filter("source"), _filter("stream")
    if source is not None and stream is not None and source != f"stream:{stream}":
        raise ApiError(422, "invalid_query", "Give ?source= or ?stream=, not two different ones.")
    state = request.args.get("state")
    if state is not None and state not in storage.STATES:
        raise ApiError(422, "invalid_query", f"Unknown state {state!r}.", {"valid": list(storage.STATES)})
    page, size = positive_int_arg("page", 1), positive_int_arg("size", 50, MAX_PAGE_SIZE)
    alerts, more = storage.list_alerts(source=f"stream:{stream}" if stream is not None else source,
                                       rule=_filter("rule"), state=state, page=page, size=size)
    return jsonify({"alerts": alerts, "page": page, "size": size, "next_page": page + 1 if more else None})


@bp.get("/alerts/<alert_id>")
@require(READ)
def get_alert(alert_id: str) -> Response:
    """One alert, its group (window, counts, notices) and the deliveries of the group's notices."""
    return jsonify(storage.get_alert(alert_id))


@bp.post("/alerts/<alert_id>/acknowledge")
@require(PREDICT)
@audited("alert.acknowledge")
def acknowledge(alert_id: str) -> Response:
    """Mark an open alert acknowledged (again: no change; a resolved one: 409)."""
    return jsonify(storage.change_state(alert_id, "acknowledged", current_principal().key_id))


@bp.post("/alerts/<alert_id>/resolve")
@require(PREDICT)
@audited("alert.resolve")
def resolve(alert_id: str) -> Response:
    """Mark an alert resolved: a repeat of it is a new alert, not one folded into this one."""
    return jsonify(storage.change_state(alert_id, "resolved", current_principal().key_id))


@bp.post("/alert-channels")
@require(ADMIN)
@audited("alert_channel.create")
def create_channel() -> tuple[Response, int]:
    """A webhook (Slack-compatible JSON) or e-mail channel of the caller's tenant."""
    body = parse_body(CreateChannelRequest, get_settings().max_json_depth)
    return jsonify(storage.create_channel(body.name, body.kind, url=body.url, recipients=body.recipients,
                                          default=body.default, created_by=current_principal().key_id)), 201


@bp.get("/alert-channels")
@require(ADMIN)
def list_channels() -> Response:
    """The tenant's alert channels (webhook URLs shown shortened: their path is a secret)."""
    return jsonify({"channels": storage.list_channels()})


@bp.delete("/alert-channels/<name>")
@require(ADMIN)
@audited("alert_channel.delete")
def delete_channel(name: str) -> Response:
    storage.delete_channel(name)
    return jsonify({"name": name, "deleted": True})
