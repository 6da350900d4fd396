"""Real-time streams: events per second through the pipeline (Redis Stream, a stream worker's consumer group,
per-key state in Redis, verdicts stored in PostgreSQL, acknowledgement) against a plain consumer loop doing
the same detector work in this process on the same events (XREAD, in-memory state, no storage), in one run;
then the event-to-verdict latency at half the pipeline's rate, and each detector's precision and recall on
the labelled synthetic stream.

Latency is measured from the event's acceptance (its XADD: the entry id's milliseconds, Redis's clock) to
the moment its verdicts are visible: a subscriber of the stream's live channel receives them, which the
worker publishes only after their commit (so they are durable too). Every event is timed: one a message
leaves unnamed (a message names its batch's latest 500) by its batch's message. The same paced events then
go through the plain loop in a child process, timed from XADD to the end of its detector work: its p50/p99 are what
this machine's scheduling alone costs an event (on a small shared machine, much of the pipeline's p99).
`decided_p99_ms` is the rows' own `decided_at - received_at` (taken before the commit), and the
`exported_*` bounds are the worker's histogram, timed at the commit.
Targets: pipeline >= 70% of the plain loop; p99 latency < 50 ms at half rate."""
from __future__ import annotations

import bisect
import importlib
import json
import math
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench._harness import _start, _stop, machine, services

DETECTORS = [{"kind": "robust_zscore", "threshold": 5},
             {"kind": "seasonal_residual", "period": "1h", "buckets": 12, "threshold": 5},
             {"kind": "isolation_forest", "min_rows": 500, "refit_every": 5000, "contamination": 0.005},
             {"kind": "key_baseline", "threshold": 4, "min_history": 50}]
KEYS = 50
STEP = 5.0  # seconds of event time between two events of one key
LABELS = ("spike", "shift", "changed")


def declaration(name: str) -> dict[str, Any]:
    return {"name": name, "fields": [{"name": "ts", "type": "timestamp"}, {"name": "device", "type": "string"},
                                     {"name": "reading", "type": "number"}],
            "timestamp_field": "ts", "key_fields": ["device"], "value_field": "reading", "detectors": DETECTORS}


def labelled_events(count: int, seed: int = 19) -> list[tuple[dict[str, Any], str | None]]:
    """`count` events of KEYS devices in event-time order: noise around each device's level and a daily-ish
    wave, with spikes (0.5%), one device whose level shifts at 60% of the run and one whose behaviour
    changes at 70%. The label of an injected event; a shifted or changed device's events are labelled for
    the first 5 minutes of event time after the change (what a detector should notice)."""
    rng = random.Random(seed)
    start = 1_767_225_600.0
    rounds = count // KEYS
    shift_at, change_at = int(rounds * 0.6), int(rounds * 0.7)
    events = []
    for step in range(rounds):
        when = start + step * STEP
        for index in range(KEYS):
            level = 100 + 10 * index
            value = level + 0.1 * level * math.sin(2 * 3.14159 * when / 3600) + rng.gauss(0, 2)
            label = None
            if index == 7 and step >= shift_at:
                value += 25
                label = "shift" if (step - shift_at) * STEP < 300 else None
            elif index == 13 and step >= change_at:
                value -= 20
                label = "changed" if (step - change_at) * STEP < 300 else None
            elif step > 100 and rng.random() < 0.005:
                value += rng.choice((-1, 1)) * rng.uniform(25, 50)
                label = "spike"
            events.append(({"ts": when, "device": f"d{index}", "reading": round(value, 3)}, label))
    return events


def _declare(name: str) -> str:
    import redis

    from cortex_tasks.core.settings import get_settings
    from cortex_tasks.core.streams.declarations import StreamSpec
    from cortex_tasks.core.streams.service import declare
    from cortex_tasks.core.tenancy import tenant_scope

    with tenant_scope("default"):
        stream, _ = declare(redis.Redis.from_url(get_settings().redis_url), StreamSpec.model_validate(declaration(name)),
                            owner="bench")
    return stream.id


def _verdicts(name: str) -> list[Any]:
    from sqlalchemy import select

    from cortex_tasks.core.storage.db import session_scope
    from cortex_tasks.core.storage.tables import StreamVerdict
    from cortex_tasks.core.tenancy import tenant_scope

    with tenant_scope("default"), session_scope() as session:
        return list(session.execute(select(StreamVerdict.event_id, StreamVerdict.detector, StreamVerdict.outcome,
                                           StreamVerdict.received_at, StreamVerdict.decided_at)
                                    .where(StreamVerdict.stream == name)))


def _count(name: str) -> int:
    from sqlalchemy import func, select

    from cortex_tasks.core.storage.db import session_scope
    from cortex_tasks.core.storage.tables import StreamVerdict
    from cortex_tasks.core.tenancy import tenant_scope

    with tenant_scope("default"), session_scope() as session:
        return session.scalar(select(func.count()).select_from(StreamVerdict).where(StreamVerdict.stream == name))


def _wait_all(name: str, expected: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _count(name) >= expected:
            return time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(f"{_count(name)} of {expected} verdicts of {name} after {timeout}s")


def _xadd_all(client: Any, key: str, events: list[dict[str, Any]]) -> None:
    pipe = client.pipeline(transaction=False)
    for event in events:
        pipe.xadd(key, {"event": json.dumps(event)})
        if len(pipe) >= 1000:
            pipe.execute()
    pipe.execute()


class PlainLoop:
    """The same detector work without the pipeline: check each event, keep the per-key state in this process,
    run the same detectors on each batch read, refit the forest (in line, or in a thread as the stream worker
    does when `fit_in_thread`); nothing stored, nothing acknowledged."""

    def __init__(self, spec_body: dict[str, Any], fit_in_thread: bool = False) -> None:
        from cortex_tasks.core.streams.declarations import StreamSpec
        from cortex_tasks.runtime.streams.detectors import build_detectors
        from cortex_tasks.runtime.streams.state import KeyState

        self.spec = StreamSpec.model_validate(spec_body)
        self.detectors = build_detectors(self.spec.detectors)
        self.forest = next(d for d in self.detectors if d.kind == "isolation_forest")
        self.seasonal = next(d for d in self.detectors if d.kind == "seasonal_residual")
        self.states: dict[str, KeyState] = defaultdict(KeyState)
        self.rows: list[list[float]] = []
        self.fit_in_thread = fit_in_thread
        self._fit: threading.Thread | None = None

    def handle(self, entries: list[Any]) -> None:
        from cortex_tasks.core.streams.events import check_event, decode
        from cortex_tasks.runtime.streams.detectors import EventContext
        from cortex_tasks.runtime.streams.windows import window_starts

        size, hop = self.spec.window.size, self.spec.window.hop
        contexts = []
        for _, fields in entries:
            event = check_event(self.spec, 0, decode(fields))
            state = self.states[event.key]
            phase = self.seasonal.phase(event.time)
            contexts.append(EventContext(event.time, event.value, state.values_between(event.time - size, event.time),
                                         tuple(state.history), state.season_of(phase),
                                         state.features.row(event.time, event.value)))
            window_starts(event.time, size, hop)
            state.add(event.time, event.value, phase)
            cutoff = event.time - size - hop
            while state.window and state.window[0][0] < cutoff:
                state.window.pop(0)
        for detector in self.detectors:
            detector.predict(contexts, {})
        self.rows.extend(row for context in contexts
                         if (row := context.forest_row()) is not None)
        del self.rows[:-self.forest.spec.max_rows]
        if self.forest.wants_fit() and len(self.rows) >= self.forest.spec.min_rows:
            if not self.fit_in_thread:
                self.forest.fit(self.rows)  # in line: the plain loop has no thread to spare the wait
            elif self._fit is None or not self._fit.is_alive():
                self._fit = threading.Thread(target=self.forest.fit, args=(list(self.rows),), daemon=True)
                self._fit.start()


def plain_loop(client: Any, key: str, spec_body: dict[str, Any], total: int, batch: int) -> float:
    """The plain loop over the `total` events already on the Redis Stream (XREAD, no group). Seconds."""
    loop = PlainLoop(spec_body)
    started = time.perf_counter()
    last, done = "0-0", 0
    while done < total:
        reply = client.xread({key: last}, count=batch)
        entries = reply[0][1]
        last = entries[-1][0]
        loop.handle(entries)
        done += len(entries)
    return time.perf_counter() - started


def plain_latency_main(redis_url: str, key: str, spec_json: str, total: int, batch: int) -> None:
    """The latency baseline, in a process of its own as the stream worker is: the plain loop reading with
    XREAD BLOCK as events arrive; for each event, from its XADD (its entry id) to the end of its batch's
    detector work. Prints the latencies (ms) as one JSON line."""
    import redis

    from cortex_tasks.runtime.streams.service import arrival_of

    client = redis.Redis.from_url(redis_url)
    loop = PlainLoop(json.loads(spec_json), fit_in_thread=True)
    loop.handle([])  # its imports, before the clock starts, as the stream worker imports its own at start
    importlib.import_module("sklearn.ensemble")
    print("ready", flush=True)
    latencies: list[float] = []
    last = "0-0"
    while len(latencies) < total:
        reply = client.xread({key: last}, count=batch, block=1000)
        if not reply:
            continue
        entries = reply[0][1]
        last = entries[-1][0]
        loop.handle(entries)
        done = time.time()
        latencies += [1000 * (done - arrival_of(entry_id.decode())) for entry_id, _ in entries]
    print(json.dumps(latencies), flush=True)


class _LiveVerdicts:
    """Subscribed to a stream's live channel: when each event's verdicts arrived (time.time())."""

    def __init__(self, client: Any, channel: str) -> None:
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(channel)
        self.pubsub.get_message(timeout=1.0)  # the subscription's confirmation
        self.arrived: list[tuple[float, bytes]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._done.is_set():
            message = self.pubsub.get_message(timeout=0.2)
            if message is not None:
                self.arrived.append((time.time(), message["data"]))  # parsed later, off the clock

    def stop(self, ids: list[str]) -> tuple[dict[str, float], int]:
        """When the verdicts of each of `ids` (entry ids) arrived, and how many of them a message named.

        A micro-batch's message names at most its latest LIVE_EVENTS_PER_MESSAGE events: the others (the
        oldest of a batch that fell behind, the slowest ones) arrived with it, in the first message naming a
        later event (one worker takes the stream's batches in entry order), and are timed by it rather than
        left out."""
        time.sleep(0.5)
        self._done.set()
        self._thread.join(5)
        self.pubsub.close()
        seen: dict[str, float] = {}
        latest: list[tuple[tuple[int, int], float]] = []  # (the latest event named so far, when), by arrival
        for at, data in self.arrived:
            message = json.loads(data)
            if message.get("type") == "verdicts":
                for event in message["events"]:
                    seen.setdefault(event["event_id"], at)
                named = max(_entry_order(event["event_id"]) for event in message["events"])
                if not latest or named > latest[-1][0]:
                    latest.append((named, at))
        arrived = dict(seen)
        for entry_id in ids:
            if entry_id not in arrived:
                index = bisect.bisect_left(latest, (_entry_order(entry_id), float("-inf")))
                if index < len(latest):
                    arrived[entry_id] = latest[index][1]
        return {entry_id: arrived[entry_id] for entry_id in ids if entry_id in arrived}, len(seen)


def _entry_order(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence)


def _produce(client: Any, key: str, events: list[dict[str, Any]], rate: float) -> None:
    """Append `events` at `rate` per second (every 5 ms, those due by then)."""
    sent, begun = 0, time.monotonic()
    while sent < len(events):
        due = min(len(events), int((time.monotonic() - begun) * rate) + 1)
        if due > sent:
            _xadd_all(client, key, events[sent:due])
            sent = due
        time.sleep(0.005)


def _plain_latency(env: dict[str, str], client: Any, name: str, spec_body: dict[str, Any],
                   paced: list[tuple[dict[str, Any], str | None]], rate: float, folder: Path) -> list[float]:
    """Latencies (ms) of the paced events through the plain loop, run in a child process."""
    from cortex_tasks.core.streams.service import events_key

    key = events_key("default", name)
    code = ("import sys, bench.streams as b; b.plain_latency_main(sys.argv[1], sys.argv[2], sys.argv[3], "
            "int(sys.argv[4]), 1000)")
    with open(folder / "plain.log", "w") as log:
        child = subprocess.Popen([sys.executable, "-c", code, env["REDIS_URL"], key, json.dumps(spec_body),
                                  str(len(paced))], stdout=subprocess.PIPE, stderr=log, env=env, text=True)
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the plain loop did not start; see {folder / 'plain.log'}")
        _produce(client, key, [event for event, _ in paced], rate)
        latencies = json.loads(child.stdout.readline())
        child.wait(30)
        return latencies
    finally:
        if child.poll() is None:
            child.kill()


def _exported_percentiles(client: Any, name: str) -> dict[str, Any]:
    """The bucket bounds of p50 and p99 in the exported histogram (cortex_stream_event_to_verdict_seconds),
    which times each event up to its verdicts' commit; the rows' `decided_at` is taken just before it."""
    from cortex_tasks.core.streams.metrics import BUCKETS, KEY_PREFIX, _bucket_field

    fields = {key.decode(): int(float(value)) for key, value in
              client.hgetall(f"{KEY_PREFIX}default\x1f{name}").items() if key.startswith(b"le_")}
    total = sum(fields.values())
    bounds: dict[str, Any] = {}
    for label, share in (("p50", 0.5), ("p99", 0.99)):
        cumulative = 0
        for upper in BUCKETS:
            cumulative += fields.get(_bucket_field(upper), 0)
            if total and cumulative >= share * total:
                bounds[f"exported_{label}_at_most_ms"] = None if math.isinf(upper) else round(upper * 1000, 1)
                break
    return bounds


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def quality(events: list[tuple[dict[str, Any], str | None]], ids: list[str], rows: list[Any]) -> dict[str, Any]:
    """Precision (of all flags, the share on injected events) and recall per injected kind, per detector."""
    label_of = {entry_id: label for entry_id, (_, label) in zip(ids, events)}
    flagged: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row.outcome == "anomaly":
            flagged[row.detector].add(row.event_id)
    positives = {kind: {entry_id for entry_id, label in label_of.items() if label == kind} for kind in LABELS}
    table = {}
    for detector in [spec["kind"] for spec in DETECTORS]:
        hits = flagged[detector]
        true = sum(1 for entry_id in hits if label_of.get(entry_id))
        table[detector] = {"flagged": len(hits), "precision": round(true / len(hits), 3) if hits else None,
                           **{f"recall_{kind}": round(len(hits & positives[kind]) / len(positives[kind]), 3)
                              if positives[kind] else None for kind in LABELS}}
    return table


def run(quick: bool) -> dict[str, Any]:
    count = 10_000 if quick else 100_000
    latency_seconds = 8.0 if quick else 30.0
    results: dict[str, Any] = {"machine": machine(), "events": count, "keys": KEYS,
                               "detectors": [spec["kind"] for spec in DETECTORS]}
    events = labelled_events(count)
    with services() as env:
        import redis

        from cortex_tasks.core.streams.service import events_key, live_channel
        from cortex_tasks.runtime.streams.service import arrival_of

        client = redis.Redis.from_url(env["REDIS_URL"])
        folder = Path(env["folder"])
        hostname = f"bench-stream-{uuid.uuid4().hex[:6]}@localhost"
        worker = _start([sys.executable, "-m", "celery", "-A", "cortex_tasks", "worker", "-Q", "streams", "-P",
                         "threads", "-c", "2", "-n", hostname, "--without-gossip", "--without-mingle", "-l",
                         "WARNING"], folder / "stream-worker.log", {**env, "CORTEX_STREAM_REFRESH_SECONDS": "0.5"})
        try:
            from cortex_tasks.core.worker_records import READY_KEY_PREFIX

            deadline = time.monotonic() + 180
            while not client.exists(READY_KEY_PREFIX + hostname):
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the stream worker did not start; see {folder / 'stream-worker.log'}")
                time.sleep(0.3)

            # 1. Throughput: the whole labelled stream at once, from the first XADD to the last stored verdict.
            name = f"bench-{uuid.uuid4().hex[:6]}"
            _declare(name)
            time.sleep(1.5)  # the worker picks the new stream up (CORTEX_STREAM_REFRESH_SECONDS)
            key = events_key("default", name)
            started = time.monotonic()
            _xadd_all(client, key, [event for event, _ in events])
            finished = _wait_all(name, count * len(DETECTORS), 900)
            pipeline_rate = count / (finished - started)
            ids = [entry_id.decode() for entry_id, _ in client.xrange(key, count=count)]
            rows = _verdicts(name)
            plain_seconds = plain_loop(client, key, declaration(name), count, 1000)
            plain_rate = count / plain_seconds
            results["throughput"] = {"pipeline_events_per_second": round(pipeline_rate, 1),
                                     "plain_loop_events_per_second": round(plain_rate, 1),
                                     "ratio": round(pipeline_rate / plain_rate, 3)}
            results["quality"] = quality(events, ids, rows)

            # 2. Latency at half the pipeline's rate: a paced producer; each event from its XADD to the moment
            # its verdicts reach a subscriber of the stream's live channel, which the worker publishes only
            # once they are committed (what a client can see, and durable).
            name = f"bench-lat-{uuid.uuid4().hex[:6]}"
            _declare(name)
            time.sleep(1.5)
            key = events_key("default", name)
            rate = pipeline_rate / 2
            paced = labelled_events(int(rate * latency_seconds) + KEYS, seed=23)
            visible = _LiveVerdicts(client, live_channel("default", name))
            _produce(client, key, [event for event, _ in paced], rate)
            _wait_all(name, len(paced) * len(DETECTORS), 600)
            seen, named = visible.stop([entry_id.decode() for entry_id, _ in client.xrange(key, count=len(paced))])
            stored: dict[str, float] = {}
            for row in _verdicts(name):
                seconds = (row.decided_at - row.received_at).total_seconds()
                stored[row.event_id] = max(stored.get(row.event_id, 0.0), seconds)
            values = [1000 * (at - arrival_of(entry_id)) for entry_id, at in seen.items()]

            # 3. The same paced events through the plain loop, in a process of its own: what this machine's
            # scheduling alone costs an event (no Redis state, no storage, no acknowledgement).
            plain = _plain_latency(env, client, f"bench-plain-{uuid.uuid4().hex[:6]}", declaration(name), paced,
                                   rate, folder)
            results["latency_at_half_rate"] = {
                "events_per_second": round(rate, 1), "events": len(paced), "events_seen_live": len(values),
                "events_named_live": named,
                "p50_ms": round(_percentile(values, 0.5), 2), "p99_ms": round(_percentile(values, 0.99), 2),
                "over_50ms_share": round(sum(v > 50 for v in values) / max(1, len(values)), 4),
                "plain_loop_p50_ms": round(_percentile(plain, 0.5), 2),
                "plain_loop_p99_ms": round(_percentile(plain, 0.99), 2),
                "decided_p99_ms": round(1000 * _percentile(list(stored.values()), 0.99), 2),
                **_exported_percentiles(client, name)}
        finally:
            _stop(worker)

    throughput, latency_row = results["throughput"], results["latency_at_half_rate"]
    print(f"\nthroughput  pipeline {throughput['pipeline_events_per_second']} ev/s, plain loop "
          f"{throughput['plain_loop_events_per_second']} ev/s, ratio {throughput['ratio']} (target >= 0.7)")
    print(f"latency at {latency_row['events_per_second']} ev/s: p50 {latency_row['p50_ms']} ms, "
          f"p99 {latency_row['p99_ms']} ms (target p99 < 50 ms); plain loop p50 {latency_row['plain_loop_p50_ms']} "
          f"ms, p99 {latency_row['plain_loop_p99_ms']} ms")
    print(f"\n{'detector':<20}{'flagged':>9}{'precision':>11}" + "".join(f"{'recall ' + k:>16}" for k in LABELS))
    for detector, row in results["quality"].items():
        print(f"{detector:<20}{row['flagged']:>9}{row['precision']!s:>11}"
              + "".join(f"{row['recall_' + k]!s:>16}" for k in LABELS))
    return results
