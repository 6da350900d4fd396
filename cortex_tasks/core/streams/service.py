"""Streams as the gateway uses them: declare, list, describe, delete, append events.

Redis keys of a stream (tenant and name in each, so two tenants' `payments` never meet):
- `cortex:stream:<tenant>:<name>:events`    the Redis Stream of events (XADD; consumer group `cortex-stream`)
- `cortex:stream:<tenant>:<name>:rejected`  events the worker refused (a direct producer's bad event), with why
- `cortex:stream:<tenant>:<name>:live`      pub/sub channel of window aggregates and verdicts (the /live route)
- `cortex:stream:<tenant>:<name>:state:<id>:*`  the worker's per-key state (windows, features, baselines),
  under the declaration's id, so a stream deleted and declared again starts from nothing
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import StreamDeclaration, StreamVerdict, StreamWindow
from cortex_tasks.core.streams.declarations import StreamSpec
from cortex_tasks.core.streams.events import check_events, encode
from cortex_tasks.core.tenancy import current_tenant

CONSUMER_GROUP = "cortex-stream"
REJECTED_MAX_LENGTH = 10_000


def stream_prefix(tenant: str, name: str) -> str:
    return f"cortex:stream:{tenant}:{name}"


def events_key(tenant: str, name: str) -> str:
    return f"{stream_prefix(tenant, name)}:events"


def rejected_key(tenant: str, name: str) -> str:
    return f"{stream_prefix(tenant, name)}:rejected"


def live_channel(tenant: str, name: str) -> str:
    return f"{stream_prefix(tenant, name)}:live"


def state_prefix(tenant: str, name: str, stream_id: str) -> str:
    return f"{stream_prefix(tenant, name)}:state:{stream_id}"


def forest_key(state: str) -> str:
    """Under a stream's state prefix: its IsolationForest's latest fit (when, on how many rows, how many fits
    so far), written by the stream worker that made it."""
    return f"{state}:forest"


class StreamNotFound(CortexError):
    def __init__(self, name: str) -> None:
        super().__init__("stream_not_found", f"No stream named {name!r}.", {"stream": name}, status=404)


@dataclass(frozen=True)
class DeclaredStream:
    id: str
    tenant: str
    name: str
    owner: str
    spec: StreamSpec
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "id": self.id, "created_at": self.created_at.isoformat(),
                **{key: value for key, value in self.spec.stored().items() if key != "name"},
                "redis_stream": events_key(self.tenant, self.name)}


def _declared(row: StreamDeclaration) -> DeclaredStream:
    return DeclaredStream(row.id, row.tenant, row.name, row.owner, StreamSpec.model_validate(row.spec),
                          row.created_at)


def ensure_group(client: redis.Redis, key: str) -> None:
    """The consumer group, created with the stream (MKSTREAM) and reading from its start, so events
    appended before any worker runs are read too."""
    try:
        client.xgroup_create(key, CONSUMER_GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def declare(client: redis.Redis, spec: StreamSpec, owner: str) -> tuple[DeclaredStream, bool]:
    """Declare a stream in the tenant in scope: (the stream, created). The same declaration again changes
    nothing; another one under an existing name is a 409 (delete the stream first)."""
    with session_scope() as session:
        row = session.scalars(select(StreamDeclaration).where(StreamDeclaration.name == spec.name)).first()
        if row is not None:
            if row.spec == spec.stored():
                return _declared(row), False
            raise CortexError("stream_exists", f"A stream named {spec.name!r} exists with another declaration; "
                                               "delete it first.", {"stream": spec.name}, status=409)
    try:
        with session_scope() as session:
            row = StreamDeclaration(id=str(uuid.uuid4()), name=spec.name, owner=owner, spec=spec.stored())
            session.add(row)
            session.flush()
            session.refresh(row)
            declared = _declared(row)
    except IntegrityError:  # declared concurrently
        raise CortexError("stream_exists", f"A stream named {spec.name!r} exists.", {"stream": spec.name},
                          status=409) from None
    ensure_group(client, events_key(declared.tenant, declared.name))
    return declared, True


def list_streams() -> list[DeclaredStream]:
    with session_scope() as session:
        return [_declared(row) for row in
                session.scalars(select(StreamDeclaration).order_by(StreamDeclaration.name))]


def get_stream(name: str) -> DeclaredStream:
    with session_scope() as session:
        row = session.scalars(select(StreamDeclaration).where(StreamDeclaration.name == name)).first()
        if row is None:
            raise StreamNotFound(name)
        return _declared(row)


def describe(client: redis.Redis, name: str) -> dict[str, Any]:
    """The declaration with the state of its Redis Stream: length, events not yet acknowledged, refused; and,
    for a stream with an IsolationForest, its latest fit (until the first, the forest is warming up)."""
    stream = get_stream(name)
    key = events_key(stream.tenant, name)
    pending = 0
    consumers: list[dict[str, Any]] = []
    try:
        groups = {group["name"].decode(): group for group in client.xinfo_groups(key)}
        group = groups.get(CONSUMER_GROUP)
        if group is not None:
            pending = int(group["pending"])
            consumers = [{"name": item["name"].decode(), "pending": int(item["pending"]),
                          "idle_ms": int(item["idle"])} for item in client.xinfo_consumers(key, CONSUMER_GROUP)]
    except redis.ResponseError:  # no stream yet
        pass
    described = {**stream.as_dict(), "length": client.xlen(key), "pending": pending, "consumers": consumers,
                 "rejected": client.xlen(rejected_key(stream.tenant, name))}
    if stream.spec.detector("isolation_forest") is not None:
        fit = client.hgetall(forest_key(state_prefix(stream.tenant, name, stream.id)))
        described["forest"] = {"fitted_at": fit[b"fitted_at"].decode() if fit else None,
                               "rows": int(fit[b"rows"]) if fit else 0, "fits": int(fit[b"fits"]) if fit else 0}
    return described


def delete_stream(client: redis.Redis, name: str) -> tuple[DeclaredStream, datetime]:
    """Forget a stream's declaration and its events now; (the stream, when). What the worker stored and its
    per-key state are many rows and keys: `purge_stored` removes them, in a task on the stream worker."""
    stream = get_stream(name)
    with session_scope() as session:
        session.execute(delete(StreamDeclaration).where(StreamDeclaration.id == stream.id))
        # The database's clock, which stamps the stored windows and verdicts purge_stored compares it with:
        # by this host's (minutes off, perhaps) a stream declared again lost its first rows, or rows stayed.
        deleted_at = session.scalar(select(func.now()))
    client.delete(events_key(stream.tenant, name), rejected_key(stream.tenant, name))
    return stream, deleted_at


def purge_stored(client: redis.Redis, name: str, stream_id: str, deleted_at: datetime) -> dict[str, int]:
    """Remove a deleted stream's stored windows and verdicts (those written before `deleted_at`: a stream
    declared again under the name keeps its own) and its per-key state in Redis, in the tenant in scope."""
    tenant = current_tenant()
    with session_scope() as session:
        windows = session.execute(delete(StreamWindow).where(
            StreamWindow.stream == name, StreamWindow.written_at <= deleted_at)).rowcount
        verdicts = session.execute(delete(StreamVerdict).where(
            StreamVerdict.stream == name, StreamVerdict.decided_at <= deleted_at)).rowcount
    keys = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{state_prefix(tenant, name, stream_id)}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            keys += client.unlink(*batch)
            batch.clear()
    if batch:
        keys += client.unlink(*batch)
    return {"windows": windows, "verdicts": verdicts, "state_keys": keys}


def append_events(client: redis.Redis, name: str, raws: list[Any]) -> list[str]:
    """Check every event, then append them all (one MULTI/EXEC: all or none); their Redis Stream ids."""
    stream = get_stream(name)
    limit = get_settings().streams.max_events_per_request
    if not raws:
        raise CortexError("invalid_request", "No events: send one event object or a list of them.")
    if len(raws) > limit:
        raise CortexError("too_many_events", f"At most {limit} events per request.", {"max": limit},
                          status=413)
    checked = check_events(stream.spec, raws)
    key = events_key(stream.tenant, name)
    max_length = get_settings().streams.max_length
    with client.pipeline(transaction=True) as pipe:
        for event in checked:
            pipe.xadd(key, encode(event), maxlen=max_length, approximate=True)
        ids = pipe.execute()
    return [entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id) for entry_id in ids]
