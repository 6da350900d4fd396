"""The stream worker's consumer loop: reads every declared stream's Redis Stream through the consumer group
`cortex-stream`, scores micro-batches (service.py) and acknowledges them once their verdicts are stored.

Why a Celery worker with a bootstep rather than a separate program: `cortex worker stream`, the Procfile,
`cortex up`'s supervisor and /ready all start and watch workers as Celery workers of a profile (workers/);
a bootstep gives the loop the worker's start-up (settings, logging, readiness announcement) and its
shutdown (the loop stops with a warm shutdown, SIGTERM), and the worker's Celery queue `streams` carries
the stream clean-up task. The loop runs in one thread of the worker's main process.

Two threads: the consumer thread does only what an event waits for (read, score, apply to the shared
state, store the verdicts, acknowledge); the housekeeping thread, once a second, stores the windows event
time has closed and follows the declared streams, so that no event waits for either.

Delivery: an entry is acknowledged (XACK) only after its verdicts are stored (committed). A stream worker that dies
(SIGKILL, a lost machine) leaves its entries pending in the group; every worker looks, every
CORTEX_STREAM_CLAIM_IDLE / 2 seconds, for entries pending longer than CORTEX_STREAM_CLAIM_IDLE and claims
them (XAUTOCLAIM) — a restarted worker has a new consumer name, so it claims its own predecessor's entries
the same way. Scoring again is harmless: state updates are applied once per entry id (state.py) and
verdicts are unique per event and detector.

Several stream workers share the consumer group (Redis hands each entry to one of them); they do not
partition by key. Per-key state lives in Redis, so whichever worker gets a key's event judges it against
the same windows, features and baselines. What sharing costs: two workers scoring events of one key in the
same instant do not see each other's batch (each sees the state before it), a difference of at most one
micro-batch; the state itself is never lost or counted twice (one atomic script per batch).
"""
from __future__ import annotations

import gc
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import ValidationError

from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.tables import StreamDeclaration
from cortex_tasks.core.streams.declarations import StreamSpec
from cortex_tasks.core.streams.service import CONSUMER_GROUP, ensure_group, events_key
from cortex_tasks.core.tenancy import all_tenants, tenant_scope
from cortex_tasks.runtime.streams.service import CLOSE_CHECK_SECONDS, StreamRuntime, start_fit_process

log = logging.getLogger(__name__)

# How long another thread of the stream worker may keep the interpreter from the consumer thread (run()).
SWITCH_INTERVAL_SECONDS = 0.001
# Consumers of the group that have nothing pending and were idle this long are removed (restarts leave one each).
FORGET_CONSUMER_MS = 3600 * 1000


@dataclass(frozen=True)
class Declared:
    id: str
    tenant: str
    name: str
    spec: dict[str, Any]


def declared_streams() -> list[Declared]:
    """Every tenant's declared streams: the stream worker serves them all (all_tenants on purpose: which
    streams exist is not one tenant's question; each stream is then processed in its own tenant's scope)."""
    from sqlalchemy import select

    from cortex_tasks.core.storage.db import session_scope

    with all_tenants(), session_scope() as session:
        return [Declared(row.id, row.tenant, row.name, row.spec) for row in session.scalars(select(StreamDeclaration))]


def _forecast_expectation(tenant: str, spec: StreamSpec) -> Any:
    """The seasonal detector's registered forecaster, when the stream names one (loaded in its tenant)."""
    seasonal = spec.detector("seasonal_residual")
    if seasonal is None or seasonal.model is None:
        return None
    from cortex_tasks.core.registry.references import qualify
    from cortex_tasks.runtime.models.loaded import get_model
    from cortex_tasks.runtime.streams.detectors import forecast_expectation

    try:
        with tenant_scope(tenant):
            return forecast_expectation(get_model(qualify(tenant, seasonal.model)), seasonal.horizon)
    except Exception:
        # An unusable model leaves the detector on the stream's own seasonal profile, and says so.
        log.exception("stream forecaster %s of tenant %s could not be used; using the seasonal profile",
                      seasonal.model, tenant)
        return None


class StreamConsumer:
    def __init__(self, client: redis.Redis | None = None, consumer_name: str | None = None) -> None:
        settings = get_settings().streams
        self.settings = settings
        self.client = client or redis.Redis.from_url(get_settings().redis_url, socket_timeout=30)
        self.consumer = consumer_name or f"{socket.gethostname()}-{os.getpid()}"
        self.runtimes: dict[str, tuple[Declared, StreamRuntime]] = {}  # events key -> stream
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_refresh = 0.0
        self._last_claim = 0.0
        self._unreadable: set[str] = set()  # events keys of declarations that fail validation
        # Started by start(); a consumer driven by hand (tests) closes windows and refreshes in run_once.
        self._housekeeper: threading.Thread | None = None
        # The last micro-batches' acknowledgements, metrics and live messages, when run() sends them with its
        # next read (their verdicts stored already).
        self._unsent: redis.client.Pipeline | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self._housekeeper = threading.Thread(target=self._housekeeping, name="stream-housekeeping", daemon=True)
        self._housekeeper.start()
        self._thread = threading.Thread(target=self.run, name="stream-consumer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in (self._thread, self._housekeeper):
            if thread is not None:
                thread.join(timeout)

    def run(self) -> None:
        log.info("stream consumer %s started", self.consumer)
        start_fit_process()
        # The worker's start-up objects (modules, settings, models) never become garbage: out of the
        # collector's sight, a full collection no longer walks them all while events wait.
        gc.collect()
        gc.freeze()
        # An event's batch waits on Redis and PostgreSQL most of its time; each time an answer comes, the
        # consumer thread needs the interpreter back from whichever thread holds it (housekeeping, a refit's
        # rows, Celery's own): a shorter switch interval (5 ms by default) bounds that wait. The stream worker
        # is a process of its own, and its other threads are not in a hurry.
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        while not self._stop.is_set():
            try:
                self.run_once(send_with_next_read=True)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("stream consumer: Redis unavailable (%s); retrying", exc)
                self._stop.wait(1.0)
            except Exception:
                # A database or detector failure must not end the loop: the entries stay pending and are
                # read again (claimed) once the failure passes.
                log.exception("stream consumer: a micro-batch failed; its events stay pending")
                self._stop.wait(1.0)
        try:
            self._send_unsent()
        except redis.RedisError as exc:
            # Its entries stay pending: claimed and scored again, their state and verdicts taken once.
            log.warning("stream consumer: the last acknowledgements could not be sent (%s)", exc)
        log.info("stream consumer %s stopped", self.consumer)

    # --- one round ---------------------------------------------------------------------------------------

    def run_once(self, send_with_next_read: bool = False) -> int:
        """Refresh (without a housekeeping thread), claim, read one micro-batch per stream and process it; the
        number of events handled. With `send_with_next_read` (the loop of run()), the batches' acknowledgements,
        metrics and live messages go with the next call's read, in one round trip; else before this returns."""
        now = time.monotonic()
        refresh = self._housekeeper is None and (now - self._last_refresh >= self.settings.refresh_seconds
                                                 or not self.runtimes)
        claim = now - self._last_claim >= self.settings.claim_idle / 2
        if refresh or claim or not self.runtimes:
            self._send_unsent()
        if refresh:
            self.refresh()
            self._last_refresh = now
        handled = 0
        if claim:
            self._last_claim = now
            handled += self.claim_abandoned()
        runtimes = self.runtimes  # replaced whole by refresh(), never changed in place
        if not runtimes:
            self._stop.wait(self.settings.processing_interval)
            return handled
        block_ms = max(1, int(self.settings.processing_interval * 1000))
        # The previous batches' acknowledgements, metrics and live messages (their verdicts stored) go in the
        # same round trip as this read: Redis runs them before the read, which may then block.
        pipe, self._unsent = self._unsent, None
        try:
            if pipe is None:
                replies = self.client.xreadgroup(CONSUMER_GROUP, self.consumer, {key: ">" for key in runtimes},
                                                 count=self.settings.buffer_size, block=block_ms)
            else:
                pipe.xreadgroup(CONSUMER_GROUP, self.consumer, {key: ">" for key in runtimes},
                                count=self.settings.buffer_size, block=block_ms)
                replies = pipe.execute()[-1]
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # A stream deleted (its key and group with it): reread the declarations, then recreate the
            # groups of the streams still declared (an events key deleted by hand).
            self.refresh()
            self._refresh_groups()
            return handled
        for key, entries in replies or []:
            handled += self._handle(key.decode() if isinstance(key, bytes) else key, entries)
        if not send_with_next_read:
            self._send_unsent()
        if self._housekeeper is None:
            self.close_windows()
        return handled

    def _send_unsent(self) -> None:
        pipe, self._unsent = self._unsent, None
        if pipe is not None:
            pipe.execute()

    def _handle(self, key: str, entries: list[tuple[Any, dict[bytes, bytes]]]) -> int:
        """Process a micro-batch read from `key`; its acknowledgement, metrics and live messages are queued
        (self._unsent), to be sent once its verdicts are stored."""
        found = self.runtimes.get(key)
        if found is None or not entries:
            return 0
        declared, runtime = found
        ids = [entry_id.decode() if isinstance(entry_id, bytes) else entry_id for entry_id, _ in entries]
        # The batch's metrics and live messages go with its acknowledgement: one round trip, after its
        # verdicts are stored.
        pipe = self.client.pipeline(transaction=False)
        with tenant_scope(declared.tenant):
            runtime.process([(entry_id, fields or {}) for entry_id, (_, fields) in zip(ids, entries)],
                            self.settings.lateness, pipe, close_windows=False)
        pipe.xack(key, CONSUMER_GROUP, *ids)
        runtime.state.acknowledged(pipe, ids, int(time.time() * 1000))
        self._send_unsent()  # an earlier batch's (another stream's of the same read, or claimed entries)
        self._unsent = pipe
        return len(ids)

    # --- the housekeeping thread -------------------------------------------------------------------------

    def _housekeeping(self) -> None:
        """Once a second: store the windows event time has closed; every CORTEX_STREAM_REFRESH_SECONDS: follow
        the declared streams. Off the consumer thread, where each would hold up the events waiting."""
        while True:
            try:
                if time.monotonic() - self._last_refresh >= self.settings.refresh_seconds or not self.runtimes:
                    self.refresh()
                    self._last_refresh = time.monotonic()
                self.close_windows()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("stream housekeeping: Redis unavailable (%s); retrying", exc)
            except Exception:
                log.exception("stream housekeeping failed; retrying")
            if self._stop.wait(min(CLOSE_CHECK_SECONDS, self.settings.refresh_seconds)):
                return

    def close_windows(self) -> None:
        for declared, runtime in list(self.runtimes.values()):
            with tenant_scope(declared.tenant):
                runtime.close_windows(self.settings.lateness)  # at most once a second per stream

    def claim_abandoned(self) -> int:
        """Claim and process the entries other consumers left pending longer than the claim idle time."""
        handled = 0
        min_idle = int(self.settings.claim_idle * 1000)
        for key in list(self.runtimes):
            start = "0-0"
            while True:
                try:
                    reply = self.client.xautoclaim(key, CONSUMER_GROUP, self.consumer, min_idle, start,
                                                   count=self.settings.buffer_size)
                except redis.ResponseError as exc:
                    if "NOGROUP" in str(exc):
                        break
                    raise
                start, entries = reply[0], [entry for entry in reply[1] if entry[1] is not None]
                # Entries deleted while pending (trimmed by MAXLEN) come back as None: acknowledged, nothing to score.
                gone = [entry[0] for entry in reply[1] if entry[1] is None] + list(reply[2] if len(reply) > 2 else [])
                if gone:
                    self.client.xack(key, CONSUMER_GROUP, *gone)
                if entries:
                    log.info("stream consumer %s claimed %d abandoned events of %s", self.consumer, len(entries), key)
                    handled += self._handle(key, entries)
                if start in (b"0-0", "0-0") or not reply[1]:
                    break
            self._forget_idle_consumers(key)
        self._send_unsent()  # claims are rare: acknowledged at once rather than with the next read
        return handled

    def _forget_idle_consumers(self, key: str) -> None:
        try:
            for consumer in self.client.xinfo_consumers(key, CONSUMER_GROUP):
                name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else consumer["name"]
                if name != self.consumer and int(consumer["pending"]) == 0 and int(consumer["idle"]) > FORGET_CONSUMER_MS:
                    self.client.xgroup_delconsumer(key, CONSUMER_GROUP, name)
        except redis.ResponseError:
            pass

    # --- declarations ------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Follow the declared streams: start serving new ones, drop deleted ones (a stream declared again
        under its name has a new id, hence new state). The consumer thread may be reading `runtimes`
        meanwhile: it is replaced whole, never changed in place."""
        current = {events_key(d.tenant, d.name): d for d in declared_streams()}
        runtimes = {key: served for key, served in self.runtimes.items()
                    if key in current and current[key].id == served[0].id}
        for key, declared in current.items():
            if key in runtimes:
                continue
            try:
                spec = StreamSpec.model_validate(declared.spec)
            except ValidationError as exc:
                # One unreadable declaration (a row written by hand, or by a release whose rules differed)
                # must not stop every other stream: it is skipped, and said so once.
                if key not in self._unreadable:
                    self._unreadable.add(key)
                    log.error("stream %s of tenant %s: its declaration cannot be read, not served: %s",
                              declared.name, declared.tenant, exc.errors(include_url=False))
                continue
            ensure_group(self.client, key)
            from cortex_tasks.runtime.streams.alerts import raise_stream_alerts

            runtime = StreamRuntime(self.client, declared.tenant, declared.name, declared.id, spec,
                                    expectation=_forecast_expectation(declared.tenant, spec),
                                    alert_hook=raise_stream_alerts if spec.alert_rules else None)
            runtimes[key] = (declared, runtime)
        self.runtimes = runtimes

    def _refresh_groups(self) -> None:
        for key in self.runtimes:
            ensure_group(self.client, key)
