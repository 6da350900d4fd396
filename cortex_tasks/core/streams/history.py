"""What a stream's worker stored, read back: closed window aggregates and per-event detector verdicts.

Read in the tenant in scope (the tables are TenantOwned), by the gateway's /streams/{name}/windows and by
the periodic reports. Records are plain frozen dataclasses so that callers never hold ORM rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import StreamVerdict, StreamWindow

# A period's history is read whole by reports; this bounds what one call may hold in memory.
MAX_ROWS = 100_000


@dataclass(frozen=True)
class WindowAggregate:
    """The aggregates of the declared value field over one closed window of one key."""

    stream: str
    key: str
    window_start: datetime
    window_end: datetime
    count: int
    total: float
    mean: float
    minimum: float
    maximum: float
    anomalies: int  # events of this key in this window that at least one detector flagged


@dataclass(frozen=True)
class VerdictRecord:
    """One detector's verdict on one event."""

    stream: str
    event_id: str
    key: str
    detector: str
    outcome: str  # anomaly | normal | warming_up
    score: float | None
    value: float | None
    expected: float | None
    event_time: datetime

    @property
    def anomalous(self) -> bool:
        return self.outcome == "anomaly"


def windows_between(stream: str, start: datetime, end: datetime, *, limit: int = MAX_ROWS,
                    after_id: int = 0) -> list[WindowAggregate]:
    """Closed windows of `stream` that start in [start, end), oldest first (then by key)."""
    windows = [window for _, window in window_rows(stream, start, end, limit=limit, after_id=after_id)]
    return sorted(windows, key=lambda window: (window.window_start, window.key))


def window_rows(stream: str, start: datetime, end: datetime, *, limit: int,
                after_id: int = 0) -> list[tuple[int, WindowAggregate]]:
    """(row id, window) pairs in id order after `after_id`: the /windows route pages on the id."""
    statement = (select(StreamWindow)
                 .where(StreamWindow.stream == stream, StreamWindow.window_start >= start,
                        StreamWindow.window_start < end, StreamWindow.id > after_id)
                 .order_by(StreamWindow.id).limit(limit))
    with session_scope() as session:
        return [(row.id, WindowAggregate(row.stream, row.key, row.window_start, row.window_end, row.count,
                                         row.total, row.mean, row.minimum, row.maximum, row.anomalies))
                for row in session.scalars(statement)]


def verdicts_between(stream: str, start: datetime, end: datetime, anomalous_only: bool = True, *,
                     limit: int = MAX_ROWS) -> list[VerdictRecord]:
    """Verdicts on events of `stream` whose event time is in [start, end), in event-time order."""
    statement = select(StreamVerdict).where(StreamVerdict.stream == stream, StreamVerdict.event_time >= start,
                                            StreamVerdict.event_time < end)
    if anomalous_only:
        statement = statement.where(StreamVerdict.outcome == "anomaly")
    statement = statement.order_by(StreamVerdict.event_time, StreamVerdict.id).limit(limit)
    with session_scope() as session:
        return [VerdictRecord(row.stream, row.event_id, row.key, row.detector, row.outcome, row.score, row.value,
                              row.expected, row.event_time) for row in session.scalars(statement)]
