"""One stream's micro-batch, scored: the plain logic of the stream worker (consumer.py reads and acknowledges).

For a batch of Redis Stream entries: check each event against the declaration (a bad one goes to the
stream's `rejected` list), read its key's state, run the detectors on every event in order (each judged
against the events before it, those of the same batch included), apply the events to the shared state (at
most once per entry id) while the verdicts are stored (at most once per event and detector), then publish
them and the windows' aggregates for the live view, hand matching verdicts to the alert rules, and store the
windows that event time has closed. The caller acknowledges the entries only after all this returned.
"""
from __future__ import annotations

import importlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TypeVar

import redis
from sqlalchemy import ARRAY, Float, bindparam, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cortex_tasks.core.storage.db import durable_autocommit_engine, get_engine
from cortex_tasks.core.storage.tables import StreamVerdict, StreamWindow
from cortex_tasks.core.streams import metrics
from cortex_tasks.core.streams.declarations import StreamSpec
from cortex_tasks.core.streams.events import CheckedEvent, InvalidEvent, check_event, decode
from cortex_tasks.core.streams.service import live_channel, rejected_key, state_prefix
from cortex_tasks.runtime.streams.detectors import (
    ANOMALY,
    EventContext,
    Expectation,
    IsolationForestDetector,
    SeasonalResidualDetector,
    Verdict,
    build_detectors,
)
from cortex_tasks.runtime.streams.features import as_named
from cortex_tasks.runtime.streams.state import StreamState
from cortex_tasks.runtime.streams.windows import Aggregate, aggregate, window_starts

log = logging.getLogger(__name__)

# How often (seconds of wall time) a worker looks for windows that event time has closed.
CLOSE_CHECK_SECONDS = 1.0
# At most this many events' verdicts go into one live message (a dashboard wants the latest, not all).
LIVE_EVENTS_PER_MESSAGE = 500

# Hands the alert rules the stream's newly stored anomalous verdicts (alerts.py); never raises.
AlertHook = Callable[["StreamRuntime", list["ScoredEvent"]], None]


def arrival_of(entry_id: str) -> float:
    """The arrival time of a Redis Stream entry: its id's milliseconds (Redis's clock at the XADD)."""
    return int(entry_id.split("-", 1)[0]) / 1000


@dataclass
class ScoredEvent:
    entry_id: str
    event: CheckedEvent
    verdicts: list[Verdict]
    features: list[float]
    windows: list[float]
    forest_row: list[float] | None = None  # the IsolationForest's training row, when the stream has one

    @property
    def anomalous(self) -> bool:
        return any(verdict.outcome == ANOMALY for verdict in self.verdicts)


@dataclass
class BatchOutcome:
    scored: list[ScoredEvent] = field(default_factory=list)
    rejected: int = 0
    stored_verdicts: int = 0
    latencies: list[float] = field(default_factory=list)
    closed_windows: int = 0


@dataclass
class ScoredBatch:
    """A micro-batch scored, not yet applied to the shared state nor stored (StreamRuntime.process)."""

    runtime: StreamRuntime
    entry_ids: list[str]
    outcome: BatchOutcome
    verdict_columns: dict[str, Any] | None  # one array per column of _verdict_insert, None without verdicts
    live_windows: list[tuple[str, ScoredEvent, tuple[Aggregate | None, int]]]
    new_verdicts: set[tuple[str, str]] = field(default_factory=set)


def _store_verdicts(batch: ScoredBatch) -> None:
    """Insert the batch's verdicts: one statement, its own transaction, committed (the write-ahead log
    flushed) when it returns."""
    with durable_autocommit_engine().connect() as connection:
        _insert_verdicts(connection, batch)


def _insert_verdicts(connection: Any, batch: ScoredBatch) -> None:
    rows = connection.exec_driver_sql(_verdict_insert_sql(connection.dialect), batch.verdict_columns or {})
    batch.new_verdicts = {(row.event_id, row.detector) for row in rows}
    batch.outcome.stored_verdicts = len(batch.new_verdicts)


class StreamRuntime:
    """A declared stream as one stream worker runs it: the declaration, its detectors and its state."""

    def __init__(self, client: redis.Redis, tenant: str, name: str, stream_id: str, spec: StreamSpec,
                 expectation: Expectation | None = None, alert_hook: AlertHook | None = None) -> None:
        self.client, self.tenant, self.name, self.stream_id, self.spec = client, tenant, name, stream_id, spec
        self.detectors = build_detectors(spec.detectors, expectation)
        self.state = StreamState(client, state_prefix(tenant, name, stream_id))
        self.forest = next((d for d in self.detectors if isinstance(d, IsolationForestDetector)), None)
        self.seasonal = next((d for d in self.detectors if isinstance(d, SeasonalResidualDetector)), None)
        self.alert_hook = alert_hook
        self._last_close_check = 0.0
        self._fit_thread: threading.Thread | None = None

    # --- the batch ---------------------------------------------------------------------------------------

    def process(self, entries: list[tuple[str, dict[bytes, bytes]]], lateness: float,
                pipe: redis.client.Pipeline | None = None, close_windows: bool = True) -> BatchOutcome:
        """Score one micro-batch, apply it to the shared state and store its verdicts, then (unless told not
        to: the stream worker does it in a thread of its own) store the windows event time has closed. The
        batch's metrics and live messages are queued on `pipe` when one is given: the caller sends them with
        the batch's acknowledgement, in one round trip after the verdicts are stored; without one they are
        sent here."""
        batch = self.score(entries, lateness)
        if batch.outcome.scored:
            # The verdicts are stored while the state is updated: each is a round trip (the insert's commit
            # waits for the write-ahead log) and neither needs the other's result. The caller acknowledges
            # the entries only once both are done; a worker killed in between leaves them pending, to be
            # scored again: the state takes each entry once, the table each event's verdict once.
            storing = _store_thread().submit(_store_verdicts, batch) if batch.verdict_columns else None
            try:
                batch.live_windows = self._apply(batch.outcome.scored, lateness)
            finally:
                if storing is not None:
                    storing.result()  # the insert's error, if it failed
            self._maybe_refit()
        stored_at = time.time()
        batch.outcome.latencies = [stored_at - arrival_of(item.entry_id) for item in batch.outcome.scored]
        own_pipe = pipe is None
        pipe = pipe if pipe is not None else self.client.pipeline(transaction=False)
        self.after_store(batch, pipe)
        if own_pipe:
            pipe.execute()
        if close_windows:
            batch.outcome.closed_windows = self.close_windows(lateness)
        return batch.outcome

    def score(self, entries: list[tuple[str, dict[bytes, bytes]]], lateness: float) -> ScoredBatch:
        """Check and score one micro-batch (its verdicts as _verdict_insert's arrays); process applies it to
        the shared state and stores the verdicts."""
        outcome = BatchOutcome()
        events: list[tuple[str, CheckedEvent]] = []
        rejected: list[tuple[str, str]] = []
        for entry_id, fields in entries:
            try:
                events.append((entry_id, check_event(self.spec, 0, decode(fields))))
            except InvalidEvent as exc:
                rejected.append((entry_id, f"{exc.field}: {exc.problem}" if exc.field else exc.problem))
            except ValueError as exc:  # not JSON, or no `event` field
                rejected.append((entry_id, str(exc)[:200]))
        if rejected:
            self._reject(rejected)
            outcome.rejected = len(rejected)
        batch = ScoredBatch(self, [entry_id for entry_id, _ in entries], outcome, None, [])
        if events:
            outcome.scored = self._score(events)
            batch.verdict_columns = self._verdict_columns(outcome.scored)
        return batch

    def after_store(self, batch: ScoredBatch, pipe: redis.client.Pipeline) -> None:
        """Once the batch's verdicts are stored: queue its metrics and live messages on `pipe`, raise its alerts."""
        self._record(batch, pipe)
        if batch.outcome.scored:
            self._publish(batch.outcome.scored, batch.live_windows, pipe)

    def _score(self, events: list[tuple[str, CheckedEvent]]) -> list[ScoredEvent]:
        size, hop = self.spec.window.size, self.spec.window.hop
        since: dict[str, float] = {}
        for _, event in events:
            since[event.key] = min(since.get(event.key, event.time), event.time - size)
        states = self.state.read(since)
        self._states = states
        contexts, phases = [], []
        for _, event in events:
            key_state = states[event.key]
            phase = self.seasonal.phase(event.time) if self.seasonal is not None else -1
            contexts.append(EventContext(
                time=event.time, value=event.value,
                window=key_state.values_between(event.time - size, event.time),
                history=(key_state.history[0], key_state.history[1], key_state.history[2]),
                season=key_state.season_of(phase) if phase >= 0 else (0.0, 0.0, 0.0),
                features=key_state.features.row(event.time, event.value)))
            phases.append(phase)
            key_state.add(event.time, event.value, phase)
        per_detector = [detector.predict(contexts, {}) for detector in self.detectors]
        latest: dict[str, float] = {}
        for _, event in events:
            latest[event.key] = max(latest.get(event.key, event.time), event.time)
        self._stale = {key: state.features.stale_fields(latest[key]) for key, state in states.items()}
        self._phases = phases
        return [ScoredEvent(entry_id, event, [verdicts[index] for verdicts in per_detector], contexts[index].features,
                            window_starts(event.time, size, hop),
                            contexts[index].forest_row() if self.forest is not None else None)
                for index, (entry_id, event) in enumerate(events)]

    def _apply(self, scored: list[ScoredEvent], lateness: float
               ) -> list[tuple[str, ScoredEvent, tuple[Aggregate | None, int]]]:
        """Apply the events to the shared state; the figures of the open window of each key the batch
        touched as the update left them, for the live view."""
        # A key's events are kept until no open window needs them (its latest event time minus a window,
        # a hop and the lateness, at least a minute): the state stays small at high rates.
        keep = self.spec.window.size + self.spec.window.hop + max(lateness, 60.0)
        # Each key's latest event of the batch by event time (a later entry on a tie): the feature cache
        # holds a key's latest row, so only this event carries it (the script keeps the row of an event
        # older than one applied before).
        latest: dict[str, ScoredEvent] = {}
        for item in scored:
            if item.event.key not in latest or item.event.time >= latest[item.event.key].event.time:
                latest[item.event.key] = item
        applied = [{
            "id": item.entry_id, "arrival": int(arrival_of(item.entry_id) * 1000), "key": item.event.key,
            "t": item.event.time, "v": repr(item.event.value), "q": repr(item.event.value * item.event.value),
            "minute": int(item.event.time // 60), "hour": int(item.event.time // 3600), "phase": phase,
            "windows": [_start_text(start) for start in item.windows], "anomalous": item.anomalous,
            **({"features": json.dumps(as_named(item.features))} if latest[item.event.key] is item else {}),
            # Only a stream with an IsolationForest keeps training rows (a JSON null would reach the script
            # as cjson.null, which Lua takes for true).
            **({"row": json.dumps(item.forest_row)} if item.forest_row is not None else {}),
        } for item, phase in zip(scored, self._phases)]
        names = [f"{key}\x1f{_start_text(item.windows[-1])}" for key, item in latest.items()]
        applied_now = self.state.apply(applied, self.forest.spec.max_rows if self.forest else 1, keep, self._stale,
                                       names, self._states)
        # The live figures of a key's open window come from the batch's own copy of the key's events (the
        # window read for scoring, the batch's events added): it holds what Redis holds when the update
        # applied every event and no other worker changed the key since the read. Otherwise (an event
        # applied before, redelivered; workers sharing the key this instant) they are taken in Redis.
        size = self.spec.window.size
        figures: dict[str, Aggregate | None] = {}
        if applied_now.new == len(applied):
            for key, item in latest.items():
                if key in applied_now.alone:
                    start = item.windows[-1]
                    figures[key] = aggregate(self._states[key].values_between(start, start + size))
        elsewhere = [(key, name) for key, name in zip(latest, names) if key not in figures]
        if elsewhere:
            taken = self.state.window_figures([name for _, name in elsewhere], size)
            figures.update((key, figure) for (key, _), (figure, _) in zip(elsewhere, taken))
        return [(key, item, (figures[key], flagged))
                for (key, item), flagged in zip(latest.items(), applied_now.flagged)]

    def _verdict_columns(self, scored: list[ScoredEvent]) -> dict[str, Any] | None:
        """The verdicts as _verdict_insert's arrays; None without any."""
        rows = [(item.entry_id, item.event.key[:256], verdict.detector, verdict.outcome, verdict.score,
                 item.event.value, verdict.expected, item.event.time, arrival_of(item.entry_id))
                for item in scored for verdict in item.verdicts]
        if not rows:
            return None
        values: dict[str, Any] = {name: list(column) for name, column in zip(_VERDICT_ARRAYS, zip(*rows))}
        values.update(tenant=self.tenant, stream=self.name)
        return values

    def _record(self, batch: ScoredBatch, pipe: redis.client.Pipeline) -> None:
        outcome = batch.outcome
        counts: Counter[tuple[str, str]] = Counter()
        for item in outcome.scored:
            for verdict in item.verdicts:
                if (item.entry_id, verdict.detector) in batch.new_verdicts:
                    counts[(verdict.detector, verdict.outcome)] += 1
        metrics.record_batch(pipe, self.tenant, self.name, outcome.latencies, self.spec.latency_threshold, counts,
                             outcome.rejected)
        if self.alert_hook is not None and outcome.scored:
            # Every scored event, redelivered ones included: an alert whose hand-off failed last time is
            # raised again, and the alerting's deduplication makes a repeated one the same alert.
            self.alert_hook(self, outcome.scored)

    def _reject(self, rejected: list[tuple[str, str]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for entry_id, reason in rejected:
            pipe.xadd(rejected_key(self.tenant, self.name), {"entry_id": entry_id, "reason": reason},
                      maxlen=10_000, approximate=True)
        pipe.execute()
        log.warning("stream %s/%s: %d events did not match the declaration (first: %s)", self.tenant, self.name,
                    len(rejected), rejected[0][1])

    # --- live view, forest, windows ----------------------------------------------------------------------

    def _publish(self, scored: list[ScoredEvent],
                 live_windows: list[tuple[str, ScoredEvent, tuple[Aggregate | None, int]]],
                 pipe: redis.client.Pipeline) -> None:
        channel = live_channel(self.tenant, self.name)
        events = [{"event_id": item.entry_id, "key": item.event.key, "time": item.event.time,
                   "value": item.event.value,
                   "verdicts": {v.detector: {"outcome": v.outcome, "score": v.score} for v in item.verdicts}}
                  for item in scored[-LIVE_EVENTS_PER_MESSAGE:]]
        pipe.publish(channel, json.dumps({"type": "verdicts", "stream": self.name, "events": events,
                                          "anomalies": sum(item.anomalous for item in scored)}))
        # The open windows of the keys this batch touched, as they stood right after its update.
        for key, item, (figures, flagged) in live_windows:
            if figures is not None:
                start = item.windows[-1]
                pipe.publish(channel, json.dumps({"type": "window", "stream": self.name, "key": key,
                                                  "start": start, "end": start + self.spec.window.size,
                                                  "closed": False, "anomalies": flagged, **figures.as_dict()}))

    def _maybe_refit(self) -> None:
        forest = self.forest
        if forest is None or not forest.wants_fit() or (self._fit_thread and self._fit_thread.is_alive()):
            return
        # Reading the training rows and fitting take a fraction of a second: a thread, so that scoring goes
        # on with the previous forest.
        self._fit_thread = threading.Thread(target=self._refit, name=f"fit-{self.name}", daemon=True)
        self._fit_thread.start()

    def _refit(self) -> None:
        forest = self.forest
        if forest is not None:
            rows = self.state.training_rows(forest.spec.max_rows)
            if len(rows) >= forest.spec.min_rows and forest.fit(rows, run=in_fit_process):
                self.state.forest_fitted(len(rows))

    def wait_for_fit(self, timeout: float = 30.0) -> None:
        """For tests and benchmarks: let a running fit finish."""
        if self._fit_thread is not None:
            self._fit_thread.join(timeout)

    def close_windows(self, lateness: float, force: bool = False) -> int:
        """Store the windows event time has closed (checked at most once a second unless forced)."""
        now = time.monotonic()
        if not force and now - self._last_close_check < CLOSE_CHECK_SECONDS:
            return 0
        self._last_close_check = now
        watermark = self.state.watermark()
        if watermark is None:
            return 0
        size = self.spec.window.size
        due = [name for name, start in self.state.open_windows().items() if start + size + lateness <= watermark]
        if not due:
            return 0
        rows, messages = [], []
        for name, (figures, flagged) in zip(due, self.state.window_figures(due, size)):
            if figures is None:
                continue
            key, _, start_text = name.rpartition("\x1f")
            start = float(start_text)
            rows.append({"tenant": self.tenant, "stream": self.name, "key": key[:256],
                         "window_start": datetime.fromtimestamp(start, UTC),
                         "window_end": datetime.fromtimestamp(start + size, UTC),
                         "count": figures.count, "total": figures.total, "mean": figures.mean,
                         "minimum": figures.minimum, "maximum": figures.maximum, "anomalies": flagged})
            messages.append({"type": "window", "stream": self.name, "key": key, "start": start,
                             "end": start + size, "closed": True, "anomalies": flagged, **figures.as_dict()})
        if rows:
            table = StreamWindow.__table__
            statement = pg_insert(table)
            # Another worker may close the same window: the same figures, written twice, are one row.
            statement = statement.on_conflict_do_update(
                constraint="uq_stream_windows_window",
                set_={name: statement.excluded[name] for name in
                      ("window_end", "count", "total", "mean", "minimum", "maximum", "anomalies")})
            with get_engine().begin() as connection:
                connection.execute(statement, rows)
            pipe = self.client.pipeline(transaction=False)
            for message in messages:
                pipe.publish(live_channel(self.tenant, self.name), json.dumps(message))
            pipe.execute()
        self.state.forget_windows(due)
        return len(rows)



# The per-row columns of a micro-batch's verdicts, sent as one array each (see _verdict_insert).
_VERDICT_ARRAYS = ("event_id", "key", "detector", "outcome", "score", "value", "expected", "event_time",
                   "received_at")
_EPOCH_ARRAYS = ("event_time", "received_at")


@lru_cache(maxsize=1)
def _verdict_insert() -> Any:
    """INSERT ... SELECT unnest(:event_id), unnest(:key), ... ON CONFLICT DO NOTHING RETURNING event_id, detector.

    One statement with one array per column rather than a multi-row VALUES: the driver then binds 9 arrays
    instead of building a statement of thousands of placeholders per micro-batch (which took most of a
    batch's time). The rows name their tenant themselves (a table statement, not an ORM session), and ON
    CONFLICT DO NOTHING makes a redelivered event's second verdicts no-ops; RETURNING says which are new."""
    table = StreamVerdict.__table__
    # Times travel as epoch seconds (binding datetimes cost more than the insert) and become timestamps here.
    arrays = [func.to_timestamp(func.unnest(bindparam(name, type_=ARRAY(Float)))) if name in _EPOCH_ARRAYS
              else func.unnest(bindparam(name, type_=ARRAY(table.c[name].type))) for name in _VERDICT_ARRAYS]
    constants = [bindparam("tenant", type_=table.c.tenant.type), bindparam("stream", type_=table.c.stream.type),
                 # The database's clock, as written_at's and the deletion time purge_stored compares with:
                 # this worker's may be minutes off.
                 func.now()]
    selected = select(*arrays, *constants)
    return (pg_insert(table).from_select([*_VERDICT_ARRAYS, "tenant", "stream", "decided_at"], selected)
            .on_conflict_do_nothing(constraint="uq_stream_verdicts_event_detector")
            .returning(table.c.event_id, table.c.detector))


@lru_cache(maxsize=4)
def _verdict_insert_sql(dialect: Any) -> str:
    """_verdict_insert compiled once for `dialect`, run as the driver's SQL: SQLAlchemy caches no compiled
    PostgreSQL INSERT (its dialect's Insert sets no inherit_cache), so executing the statement itself compiled
    it again for every micro-batch, milliseconds of Python on each event's path."""
    return _verdict_insert().compile(dialect=dialect).string


_fit_processes: dict[int, ProcessPoolExecutor] = {}
_store_threads: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()
Pool = TypeVar("Pool", ThreadPoolExecutor, ProcessPoolExecutor)


def _of_this_process(pools: dict[int, Pool], create: Callable[[], Pool]) -> Pool:
    """This worker process's pool in `pools`, created on first use: a process forked later gets its own."""
    pid = os.getpid()
    with _pools_lock:
        pool = pools.get(pid)
        if pool is None:
            pool = pools[pid] = create()
        return pool


def _store_thread() -> ThreadPoolExecutor:
    """The thread that stores a micro-batch's verdicts while the consumer thread updates the state."""
    return _of_this_process(_store_threads,
                            lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-store"))


def in_fit_process(function: Callable[..., Any], *arguments: Any) -> Any:
    """function(*arguments) in the stream worker's fit process. A fit is a few hundred milliseconds of
    Python and NumPy: in a thread of the worker it would hold the interpreter lock against the scoring of
    events (each of their round trips waiting for it again), in a process of its own it does not, and the
    process runs only on idle CPU time. One per worker process (spawned: the worker has threads), started
    with the consumer (start_fit_process); a fit process that died is replaced, and the fit is made in this
    process meanwhile."""
    pool = _fit_pool()
    try:
        return pool.submit(function, *arguments).result()
    except BrokenProcessPool:
        log.warning("the stream fit process died; fitting in the worker, a new one is started for the next fit")
        with _pools_lock:
            if _fit_processes.get(os.getpid()) is pool:
                del _fit_processes[os.getpid()]
        return function(*arguments)


def start_fit_process() -> None:
    """Start this worker process's fit process and have it import what a fit needs. Both take seconds on a
    busy machine, and left to the first fit, the stream's first minutes after its warm-up went unscored by
    the forest meanwhile."""
    _fit_pool().submit(_import_fit_modules)


def _fit_pool() -> ProcessPoolExecutor:
    return _of_this_process(_fit_processes, lambda: ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_set_up_fit_process))


def _import_fit_modules() -> None:
    # Run in the fit process, which imports this module (and the detectors) to find this function.
    importlib.import_module("sklearn.ensemble")


def _set_up_fit_process() -> None:
    """Run first in the fit process: a lower priority than the worker's, and an exit when the worker goes.
    The process waits on its task queue, whose writing end it holds itself, so a worker killed outright
    (SIGKILL, its own parent gone) would leave it, and multiprocessing's resource tracker with it, running
    forever; the parent's sentinel becomes readable when the parent dies, however it dies."""
    _run_when_idle()
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_after, args=(parent.sentinel,), name="follow-parent", daemon=True).start()


def _run_when_idle() -> None:
    """Linux's SCHED_IDLE: the fit runs on CPU time no other process wants. A fit is 150 ms of CPU per
    5,000 rows; at `nice 10` it still took a core from the consumer, Redis and PostgreSQL on a two-core
    machine, and every refit showed in the events' p99 latency (half-rate bench: 38-57 ms with refits,
    27-31 ms without). On a machine busy all the time a refit waits longer; scoring goes on with the
    previous forest meanwhile."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux
        os.nice(10)


def _exit_after(parent_sentinel: int) -> None:
    multiprocessing.connection.wait([parent_sentinel])
    os._exit(0)


def _start_text(start: float) -> str:
    """A window start as written in Redis hash fields (the same text in Python and in the Lua script)."""
    return f"{start:.3f}"


