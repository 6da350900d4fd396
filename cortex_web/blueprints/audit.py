"""GET /api/v1/audit (model_admin: its tenant's events; the platform admin: every tenant's): the audit log,
newest first, filtered and paginated; GET /api/v1/audit/verify (platform admin): the hash chain checked row
by row."""
from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Response, jsonify, request

from cortex_tasks.core.audit.chain import verify_chain
from cortex_tasks.core.audit.service import EVENT_TYPES, query_events
from cortex_tasks.core.auth.administration import readable_tenants
from cortex_tasks.core.auth.roles import ADMIN, PLATFORM
from cortex_web.auth import current_principal, require
from cortex_web.errors import ApiError
from cortex_web.request_body import positive_int_arg

bp = Blueprint("audit", __name__, url_prefix="/api/v1")
MAX_PAGE_SIZE = 200


def _moment(name: str) -> datetime | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ApiError(422, "invalid_query", f"?{name}= must be an ISO 8601 time, e.g. 2025-01-31T12:00:00Z.") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@bp.get("/audit")
@require(ADMIN)
def list_events() -> Response:
    """Audit events: ?type= (model_access|configuration_changes|security_violations|alerts), ?actor= (key
    id), ?since= / ?until= (ISO 8601), ?page= and ?size= (at most 200, default 50). A model_admin sees its
    tenant's events; the platform admin every tenant's (and events of no tenant, such as refused keys), or
    one tenant's with ?tenant=."""
    event_type = request.args.get("type")
    if event_type is not None and event_type not in EVENT_TYPES:
        raise ApiError(422, "invalid_query", f"Unknown event type {event_type!r}.", {"valid": list(EVENT_TYPES)})
    actor = request.args.get("actor")
    if actor is not None and not 0 < len(actor) <= 64:
        raise ApiError(422, "invalid_query", "?actor= is a key id of 1..64 characters.")
    since, until = _moment("since"), _moment("until")
    if since and until and since >= until:
        raise ApiError(422, "invalid_query", "?since= must be before ?until=.")
    page, size = positive_int_arg("page", 1), positive_int_arg("size", 50, MAX_PAGE_SIZE)
    tenant = readable_tenants(current_principal(), request.args.get("tenant"))
    events, more = query_events(event_type, actor, since, until, page, size, tenant=tenant)
    return jsonify({"events": events, "page": page, "size": size, "next_page": page + 1 if more else None})


@bp.get("/audit/verify")
@require(PLATFORM)
def verify() -> Response:
    """Walk the audit log's hash chain in id order and report whether it is intact or its first broken
    link (200 either way: the check itself worked). It reads every row: on a large log prefer
    `cortex audit verify`, which no request timeout cuts short."""
    return jsonify(verify_chain().to_api())
