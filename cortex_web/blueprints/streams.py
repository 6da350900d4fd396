"""Real-time streams over HTTP (docs/streams.md).

- `POST   /api/v1/streams`                  declare a stream (fields, timestamp, key, value, window, detectors, rules)
- `GET    /api/v1/streams`                  the tenant's streams
- `GET    /api/v1/streams/{name}`           one declaration, with its Redis Stream's length and pending events
- `DELETE /api/v1/streams/{name}`           forget it: declaration and events now, stored history by the stream worker
- `POST   /api/v1/streams/{name}/events`    one event (a JSON object), a batch (a JSON array), or an Arrow IPC
                                            stream (`Content-Type: application/vnd.apache.arrow.stream`)
- `GET    /api/v1/streams/{name}/live`      Server-Sent Events: verdicts and window aggregates as computed
- `GET    /api/v1/streams/{name}/windows`   stored window aggregates, `?from=&to=` (ISO 8601), `&limit=&after=`

Declaring and sending events need `predict`, deleting `admin`, reading `read`. Another tenant's stream is as
unknown as a missing one (404): every lookup is in the caller's tenant.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from flask import Blueprint, Response, jsonify, request, stream_with_context

from cortex_tasks import app as celery_app
from cortex_tasks.core.auth.roles import ADMIN, PREDICT, READ
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import StreamPurgeMessage
from cortex_tasks.core.queues import STREAMS
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.streams import service
from cortex_tasks.core.streams.declarations import STREAM_NAME, StreamSpec
from cortex_tasks.core.streams.events import arrow_rows
from cortex_tasks.core.streams.history import window_rows
from cortex_tasks.core.streams.metrics import StreamMetricsCollector
from cortex_web.audit import audited
from cortex_web.auth import current_principal, in_request_tenant, require
from cortex_web.dispatch import redis_client
from cortex_web.errors import ApiError
from cortex_web.limits import limit_work
from cortex_web.metrics import register_shared_collector
from cortex_web.request_body import accepts_body_up_to, json_body, parse_body, positive_int_arg

bp = Blueprint("streams", __name__, url_prefix="/api/v1")

ARROW_STREAM = "application/vnd.apache.arrow.stream"
EVENTS_MAX_BYTES = 32 * 1024 * 1024
MAX_WINDOWS_PER_PAGE = 5000
MAX_ROW_ID = 2**63 - 1
HEARTBEAT_SECONDS = 15.0

register_shared_collector(StreamMetricsCollector())


def _name(name: str) -> str:
    if not STREAM_NAME.fullmatch(name):
        raise service.StreamNotFound(name[:64])
    return name


@bp.post("/streams")
@require(PREDICT)
@audited("stream.declare")
def declare_stream() -> tuple[Response, int]:
    """Declare a stream (the same declaration again: 200; another one under the name: 409)."""
    spec = parse_body(StreamSpec, get_settings().max_json_depth)
    declared, created = service.declare(redis_client(), spec, owner=current_principal().key_id)
    return jsonify(declared.as_dict()), 201 if created else 200


@bp.get("/streams")
@require(READ)
def list_streams() -> Response:
    """The caller's tenant's streams."""
    return jsonify({"streams": [stream.as_dict() for stream in service.list_streams()]})


@bp.get("/streams/<name>")
@require(READ)
def describe_stream(name: str) -> Response:
    """A stream's declaration, with its Redis Stream's length, pending and refused events."""
    return jsonify(service.describe(redis_client(), _name(name)))


@bp.delete("/streams/<name>")
@require(ADMIN)
@audited("stream.delete")
def delete_stream(name: str) -> Response:
    """Delete a stream: its declaration and events now; its stored windows, verdicts and state shortly after."""
    stream, deleted_at = service.delete_stream(redis_client(), _name(name))
    message = StreamPurgeMessage(tenant=stream.tenant, stream=stream.name, stream_id=stream.id,
                                 deleted_at=deleted_at.isoformat())
    celery_app.send_task(task_names.STREAMS_PURGE_STREAM, kwargs=message.to_kwargs(), queue=STREAMS)
    return jsonify({"stream": stream.name, "deleted": True})


@bp.post("/streams/<name>/events")
@require(PREDICT)
@limit_work
@accepts_body_up_to(EVENTS_MAX_BYTES)
def send_events(name: str) -> tuple[Response, int]:
    """Append one event (a JSON object) or a batch (a JSON array, or an Arrow IPC stream) to the stream.
    Every event is checked first: one that does not match the declaration is a 422 naming its index and
    field, and nothing is appended."""
    name = _name(name)
    service.get_stream(name)  # a missing stream is a 404 before its body is read
    if request.mimetype == ARROW_STREAM:
        raws: list[Any] = arrow_rows(request.get_data())
    else:
        body = json_body(get_settings().max_json_depth)
        if isinstance(body, dict):
            raws = [body]
        elif isinstance(body, list):
            raws = body
        else:
            raise ApiError(422, "invalid_request", "The body is one event (a JSON object) or a list of events.")
    ids = service.append_events(redis_client(), name, raws)
    return jsonify({"stream": name, "accepted": len(ids), "first_id": ids[0], "last_id": ids[-1]}), 202


def _moment(argument: str, default: datetime) -> datetime:
    raw = request.args.get(argument)
    if raw is None or raw == "":
        return default
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise ApiError(422, "invalid_query", f"?{argument}= must be an ISO 8601 date and time.") from None
    if not 1 < moment.year < 9999:  # a day either side stays a date (a default `from` is `to` - 1 day)
        raise ApiError(422, "invalid_query", f"?{argument}= must be between the years 2 and 9998.")
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@bp.get("/streams/<name>/windows")
@require(READ)
def stream_windows(name: str) -> Response:
    """Stored (closed) window aggregates whose window starts in [from, to) (default: the last 24 hours),
    in the order they were stored; page with `after` = the answer's `next_after`."""
    name = _name(name)
    service.get_stream(name)  # 404 before any query
    end = _moment("to", datetime.now(timezone.utc))
    start = _moment("from", end - timedelta(days=1))
    if start >= end:
        raise ApiError(422, "invalid_query", "?from= must be before ?to=.")
    limit = positive_int_arg("limit", 500, MAX_WINDOWS_PER_PAGE)
    raw_after = request.args.get("after", "0")
    # ASCII digits that fit a bigint: the stored windows' ids.
    if not (raw_after.isascii() and raw_after.isdigit()) or int(raw_after[:20]) > MAX_ROW_ID:
        raise ApiError(422, "invalid_query", "?after= is the next_after of a previous answer.")
    after = int(raw_after)
    rows = window_rows(name, start, end, limit=limit + 1, after_id=after)
    page = rows[:limit]
    return jsonify({
        "stream": name, "from": start.isoformat(), "to": end.isoformat(),
        "windows": [{"key": window.key, "start": window.window_start.isoformat(),
                     "end": window.window_end.isoformat(), "count": window.count, "sum": window.total,
                     "mean": window.mean, "min": window.minimum, "max": window.maximum,
                     "anomalies": window.anomalies} for _, window in page],
        "next_after": page[-1][0] if len(rows) > limit else None,
    })


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@bp.get("/streams/<name>/live")
@require(READ)
def live(name: str) -> Response:
    """Server-Sent Events: `verdicts` (each micro-batch's events with their detectors' verdicts) and
    `window` (a key's open window as it grows, and each window when it closes), as the stream worker
    computes them; a comment line every 15 s keeps proxies from closing the connection. It ends with an
    `end` event after `?seconds=` (default and most: CORTEX_STREAM_LIVE_MAX_SECONDS)."""
    name = _name(name)
    stream = service.get_stream(name)
    most = get_settings().streams.live_max_seconds
    seconds = min(float(positive_int_arg("seconds", int(most))), most)
    client = redis_client()
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    # Subscribed before the answer starts, so that nothing computed after this request is missed.
    pubsub.subscribe(service.live_channel(stream.tenant, name))

    def events() -> Iterator[str]:
        deadline = time.monotonic() + seconds
        last_sent = time.monotonic()
        try:
            yield _sse("ready", {"stream": name, "seconds": seconds})
            while (left := deadline - time.monotonic()) > 0:
                message = pubsub.get_message(timeout=min(1.0, left))
                if message is None:
                    if time.monotonic() - last_sent >= HEARTBEAT_SECONDS:
                        last_sent = time.monotonic()
                        yield ": keep-alive\n\n"
                    continue
                data = json.loads(message["data"])
                last_sent = time.monotonic()
                yield _sse(str(data.get("type", "message")), data)
            yield _sse("end", {"stream": name, "reason": "time limit"})
        finally:
            pubsub.close()  # the client left, or the time is up

    return Response(stream_with_context(in_request_tenant(events())), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
