"""Events of a stream: checked against the declared fields, and encoded for the Redis Stream.

The gateway checks every event of a request before it appends any (one bad event: 422 naming its index
and field, nothing appended). The stream worker checks again what it reads, because a producer may write
to the Redis Stream directly; an event it refuses goes to the stream's `rejected` list, never lost silently.

On the Redis Stream an entry has one field, `event`, holding the event as a JSON object. The entry id's
millisecond part is the event's arrival time (Redis's clock at the XADD): the worker measures
event-to-verdict latency from it, whoever the producer was.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.streams.declarations import StreamSpec

EVENT_FIELD = "event"
MAX_STRING_CHARS = 1000
# Event times are checked for plausibility: a timestamp in milliseconds read as seconds lands in year 50,000.
EARLIEST, LATEST = datetime(1970, 1, 2, tzinfo=timezone.utc).timestamp(), datetime(2200, 1, 1, tzinfo=timezone.utc).timestamp()


class InvalidEvent(CortexError):
    """An event that does not match its stream's declaration: 422 naming the event's index and field."""

    def __init__(self, index: int, field: str | None, problem: str) -> None:
        where = f"events[{index}]" + (f".{field}" if field else "")
        super().__init__("invalid_event", f"{where}: {problem}", {"index": index, "field": field}, status=422)
        self.index, self.field, self.problem = index, field, problem


@dataclass(frozen=True)
class CheckedEvent:
    """An event as the worker uses it: its fields (timestamps as epoch seconds), time, key and value."""

    fields: dict[str, Any]
    time: float
    key: str
    value: float


def _timestamp(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError("expected a timestamp (ISO 8601 or epoch seconds), got a boolean")
    if isinstance(raw, (int, float)):
        value = float(raw)
    elif isinstance(raw, datetime):
        value = (raw if raw.tzinfo else raw.replace(tzinfo=timezone.utc)).timestamp()
    elif isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"expected a timestamp (ISO 8601 or epoch seconds), got {raw[:40]!r}") from None
        value = (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
    else:
        raise ValueError(f"expected a timestamp (ISO 8601 or epoch seconds), got {type(raw).__name__}")
    if not (math.isfinite(value) and EARLIEST <= value <= LATEST):
        raise ValueError("the timestamp is outside 1970-01-02 .. 2200 (epoch seconds, not milliseconds)")
    return value


def _typed(kind: str, raw: Any) -> Any:
    if kind == "timestamp":
        return _timestamp(raw)
    if kind == "number":
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ValueError(f"expected a number, got {type(raw).__name__}")
        if not math.isfinite(raw):
            raise ValueError("expected a finite number")
        return float(raw)
    if kind == "integer":
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)  # Arrow and JSON encoders may write 3 as 3.0
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError(f"expected an integer, got {type(raw).__name__}")
        if abs(raw) > 2**63:
            raise ValueError("the integer is out of range")
        return raw
    if kind == "boolean":
        if not isinstance(raw, bool):
            raise ValueError(f"expected true or false, got {type(raw).__name__}")
        return raw
    if not isinstance(raw, str):
        raise ValueError(f"expected a string, got {type(raw).__name__}")
    if len(raw) > MAX_STRING_CHARS:
        raise ValueError(f"a string is at most {MAX_STRING_CHARS} characters")
    return raw


def key_of(spec: StreamSpec, fields: dict[str, Any]) -> str:
    """The key of an event: its key fields' values joined by `|` (`*` for a stream without key fields)."""
    if not spec.key_fields:
        return "*"
    return "|".join(str(fields[name]).lower() if isinstance(fields[name], bool) else str(fields[name])
                    for name in spec.key_fields)


def check_event(spec: StreamSpec, index: int, raw: Any) -> CheckedEvent:
    """The event, typed, or InvalidEvent naming the first problem."""
    if not isinstance(raw, dict):
        raise InvalidEvent(index, None, "an event is a JSON object of its fields")
    types = spec.field_types()
    for name in raw:
        if name not in types:
            raise InvalidEvent(index, str(name)[:64], "not a declared field of this stream")
    fields: dict[str, Any] = {}
    for field in spec.fields:
        value = raw.get(field.name)
        if value is None:
            if field.required:
                raise InvalidEvent(index, field.name, "required")
            continue
        try:
            fields[field.name] = _typed(field.type, value)
        except ValueError as exc:
            raise InvalidEvent(index, field.name, str(exc)) from None
    return CheckedEvent(fields, fields[spec.timestamp_field], key_of(spec, fields), float(fields[spec.value_field]))


def check_events(spec: StreamSpec, raws: list[Any]) -> list[CheckedEvent]:
    return [check_event(spec, index, raw) for index, raw in enumerate(raws)]


def encode(event: CheckedEvent) -> dict[str, str]:
    """The Redis Stream entry of an event: {"event": its JSON}."""
    return {EVENT_FIELD: json.dumps(event.fields, separators=(",", ":"))}


def decode(entry: dict[bytes, bytes]) -> Any:
    """What a producer wrote (the JSON object of the `event` field); ValueError if that is not there."""
    raw = entry.get(EVENT_FIELD.encode())
    if raw is None:
        raise ValueError(f"the entry has no {EVENT_FIELD!r} field")
    return json.loads(raw)


def arrow_rows(body: bytes) -> list[dict[str, Any]]:
    """The rows of an Arrow IPC stream body, as event objects (nulls left out)."""
    from cortex_tasks.core.storage.arrow_io import read_ipc_stream

    try:
        table = read_ipc_stream(body)
        listed = table.to_pylist()
    except Exception as exc:  # noqa: BLE001 - whatever pyarrow raises on these bytes, they are the client's
        raise CortexError("invalid_arrow", f"The body is not a readable Arrow IPC stream: {str(exc)[:200]}",
                          status=400) from None
    return [{name: value for name, value in row.items() if value is not None} for row in listed]
