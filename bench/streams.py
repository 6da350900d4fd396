"""Real-time streams: events per second through the pipeline (Redis Stream, a stream worker's consumer group,
per-key state in Redis, verdicts stored in PostgreSQL, acknowledgement) against a plain consumer loop doing
the same detector work in this process on the same events (XREAD, in-memory state, no storage), in one run;
then the event-to-verdict latency (XADD to stored verdict) at half the pipeline's rate; and each detector's
precision and recall on the labelled synthetic stream.
Targets: pipeline >= 70% of the plain loop; p99 latency < 50 ms at half rate."""
from __future__ import annotations

import json
import math
import random
import sys
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


def plain_loop(client: Any, key: str, spec_body: dict[str, Any], total: int, batch: int) -> float:
    """The same work without the pipeline: read the Redis Stream (XREAD, no group, no acknowledgement), check
    each event, keep the per-key state in this process, run the same detectors; nothing stored. Seconds."""
    from cortex_tasks.core.streams.declarations import StreamSpec
    from cortex_tasks.core.streams.events import check_event, decode
    from cortex_tasks.runtime.streams.detectors import EventContext, build_detectors
    from cortex_tasks.runtime.streams.features import forest_row
    from cortex_tasks.runtime.streams.state import KeyState
    from cortex_tasks.runtime.streams.windows import window_starts

    spec = StreamSpec.model_validate(spec_body)
    detectors = build_detectors(spec.detectors)
    forest = next(d for d in detectors if d.kind == "isolation_forest")
    seasonal = next(d for d in detectors if d.kind == "seasonal_residual")
    states: dict[str, KeyState] = defaultdict(KeyState)
    rows: list[list[float]] = []
    size, hop = spec.window.size, spec.window.hop
    started = time.perf_counter()
    last, done = "0-0", 0
    while done < total:
        reply = client.xread({key: last}, count=batch)
        entries = reply[0][1]
        last = entries[-1][0]
        contexts = []
        for _, fields in entries:
            event = check_event(spec, 0, decode(fields))
            state = states[event.key]
            phase = seasonal.phase(event.time)
            contexts.append(EventContext(event.time, event.value, state.values_between(event.time - size, event.time),
                                         tuple(state.history), state.season_of(phase),
                                         state.features.row(event.time, event.value)))
            window_starts(event.time, size, hop)
            state.add(event.time, event.value, phase)
            cutoff = event.time - size - hop
            while state.window and state.window[0][0] < cutoff:
                state.window.pop(0)
        for detector in detectors:
            detector.predict(contexts, {})
        rows.extend(row for context in contexts if (row := forest_row(context.features, context.history)) is not None)
        del rows[:-forest.spec.max_rows]
        if forest.wants_fit() and len(rows) >= forest.spec.min_rows:
            forest.fit(rows)  # in line: the plain loop has no thread to spare the wait
        done += len(entries)
    return time.perf_counter() - started


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

        from cortex_tasks.core.streams.service import events_key

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

            # 2. Latency at half the pipeline's rate: a paced producer, then every event's XADD-to-verdict time.
            name = f"bench-lat-{uuid.uuid4().hex[:6]}"
            _declare(name)
            time.sleep(1.5)
            key = events_key("default", name)
            rate = pipeline_rate / 2
            paced = labelled_events(int(rate * latency_seconds) + KEYS, seed=23)
            sent, begun = 0, time.monotonic()
            while sent < len(paced):
                due = min(len(paced), int((time.monotonic() - begun) * rate) + 1)
                if due > sent:
                    _xadd_all(client, key, [event for event, _ in paced[sent:due]])
                    sent = due
                time.sleep(0.005)
            _wait_all(name, len(paced) * len(DETECTORS), 600)
            latency: dict[str, float] = {}
            for row in _verdicts(name):
                seconds = (row.decided_at - row.received_at).total_seconds()
                latency[row.event_id] = max(latency.get(row.event_id, 0.0), seconds)
            values = list(latency.values())
            results["latency_at_half_rate"] = {
                "events_per_second": round(rate, 1), "events": len(values),
                "p50_ms": round(1000 * _percentile(values, 0.5), 2), "p99_ms": round(1000 * _percentile(values, 0.99), 2),
                "over_50ms_share": round(sum(v > 0.05 for v in values) / max(1, len(values)), 4),
                **_exported_percentiles(client, name)}
        finally:
            _stop(worker)

    throughput, latency_row = results["throughput"], results["latency_at_half_rate"]
    print(f"\nthroughput  pipeline {throughput['pipeline_events_per_second']} ev/s, plain loop "
          f"{throughput['plain_loop_events_per_second']} ev/s, ratio {throughput['ratio']} (target >= 0.7)")
    print(f"latency at {latency_row['events_per_second']} ev/s: p50 {latency_row['p50_ms']} ms, "
          f"p99 {latency_row['p99_ms']} ms (target p99 < 50 ms)")
    print(f"\n{'detector':<20}{'flagged':>9}{'precision':>11}" + "".join(f"{'recall ' + k:>16}" for k in LABELS))
    for detector, row in results["quality"].items():
        print(f"{detector:<20}{row['flagged']:>9}{row['precision']!s:>11}"
              + "".join(f"{row['recall_' + k]!s:>16}" for k in LABELS))
    return results
