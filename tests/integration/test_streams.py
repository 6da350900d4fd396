"""Real-time streams end to end: the gateway (Flask app), a real stream worker (`celery worker -Q streams`,
the workers/stream.py profile), real Redis and PostgreSQL.

A producer sends a synthetic stream with injected anomalies (spikes, a level shift, one key whose behaviour
changes) half through the API and half straight onto the Redis Stream; the test checks which events each
detector flagged, the stored windows, the metrics and the live view; a stream worker SIGKILLed mid-stream
loses and duplicates no verdict; bad events are a 4xx naming the field, with nothing appended.

The stream workers here claim a dead consumer's events after 2 s (CORTEX_STREAM_CLAIM_IDLE, 30 s shipped:
test_the_shipped_claim_idle_time_claims_only_events_idle_that_long shows the default at work).
"""
from __future__ import annotations

import io
import json
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator

import pyarrow as pa
import pytest
import redis
from sqlalchemy import func, select

from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import StreamVerdict
from cortex_tasks.core.streams.service import CONSUMER_GROUP, events_key, state_prefix
from cortex_tasks.core.tenancy import tenant_scope
from tests.support.processes import WorkerProcess
from tests.support.waiting import wait_for

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
STEP = 10.0  # seconds of event time between two events of one user
MINUTES = 60
USERS = [f"u{i}" for i in range(6)]
SPIKES = {("u0", 20), ("u1", 35), ("u2", 50), ("u0", 45), ("u1", 12), ("u2", 27)}  # (user, minute)
SHIFT_USER, SHIFT_MINUTE = "u3", 30  # level shift: +30 (10 sd) from minute 30 on
CHANGED_USER, CHANGED_MINUTE = "u5", 40  # behaviour change: -25 from minute 40 on
FAST_WORKER_ENV = {"CORTEX_STREAM_CLAIM_IDLE": "2", "CORTEX_STREAM_LATENESS": "1", "CORTEX_STREAM_REFRESH_SECONDS": "0.5"}


def stream_worker(**env: str) -> WorkerProcess:
    return WorkerProcess("streams", pool="threads", concurrency=2, name="stream", env={**FAST_WORKER_ENV, **env})


@pytest.fixture()
def worker() -> Iterator[WorkerProcess]:
    process = stream_worker().start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture()
def client() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url)


def declaration(name: str, **changes) -> dict:
    return {
        "name": name,
        "fields": [{"name": "ts", "type": "timestamp"}, {"name": "user", "type": "string"},
                   {"name": "amount", "type": "number"}, {"name": "channel", "type": "string", "required": False}],
        "timestamp_field": "ts", "key_fields": ["user"], "value_field": "amount",
        "window": {"size": "5m", "overlap": "30s"},
        "detectors": [{"kind": "robust_zscore", "threshold": 6},
                      {"kind": "key_baseline", "threshold": 4, "min_history": 60},
                      {"kind": "seasonal_residual", "period": "20m", "buckets": 4, "threshold": 6},
                      {"kind": "isolation_forest", "min_rows": 200, "refit_every": 500}],
        "alert_rules": [{"name": "spike", "detector": "robust_zscore", "min_score": 8, "severity": "high",
                         "fields": ["user"], "channels": ["ops"], "cooldown": "15m"}],
        **changes,
    }


def synthetic_events() -> list[dict]:
    """Events in event-time order, with the labels of what was injected."""
    rng = random.Random(7)
    events = []
    for step in range(int(MINUTES * 60 / STEP)):
        time_s = T0 + step * STEP
        minute = int(step * STEP // 60)
        for index, user in enumerate(USERS):
            value = 50 + 20 * index + rng.gauss(0, 3)
            label = None
            if (user, minute) in SPIKES and step * STEP % 60 == 0:
                value += 60
                label = "spike"
            if user == SHIFT_USER and minute >= SHIFT_MINUTE:
                value += 30
                label = "shift"
            if user == CHANGED_USER and minute >= CHANGED_MINUTE:
                value -= 25
                label = "changed"
            events.append({"event": {"ts": time_s, "user": user, "amount": round(value, 3)}, "label": label,
                           "minute": minute})
    return events


def declare(api, body: dict) -> None:
    response = api.post("/api/v1/streams", body)
    assert response.status_code == 201, response.get_json()


def verdict_rows(name: str) -> list[StreamVerdict]:
    with tenant_scope("default"), session_scope() as session:
        return list(session.scalars(select(StreamVerdict).where(StreamVerdict.stream == name)))


def verdict_count(name: str) -> int:
    with tenant_scope("default"), session_scope() as session:
        return session.scalar(select(func.count()).select_from(StreamVerdict).where(StreamVerdict.stream == name))


def wait_for_verdicts(name: str, expected: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        count = verdict_count(name)
        if count >= expected:
            return
        time.sleep(0.5)
    pytest.fail(f"{count} of {expected} verdicts after {timeout}s")


def test_a_synthetic_stream_is_scored_and_the_injected_anomalies_are_flagged(api, worker, client):
    name = f"pay-{uuid.uuid4().hex[:8]}"
    declare(api, declaration(name))
    events = synthetic_events()
    half = len(events) // 2
    warm_up = 10 * len(USERS) * int(60 / STEP)  # the first 10 minutes: windows fill, the forest gets its first fit
    # The first half through the API in batches, the second straight onto the Redis Stream.
    for start in range(0, half, 180):
        if start == warm_up:
            wait_for_verdicts(name, 4 * warm_up)
            # The forest fits in the background (a second, or several on a busy machine): what follows is
            # sent once the stream shows its first fit.
            wait_for(lambda: api.get(f"/api/v1/streams/{name}").get_json()["forest"]["fitted_at"], 120,
                     "the forest's first fit")
        response = api.post(f"/api/v1/streams/{name}/events", [item["event"] for item in events[start:min(half, start + 180)]])
        assert response.status_code == 202, response.get_json()
    key = events_key("default", name)
    for item in events[half:]:
        client.xadd(key, {"event": json.dumps(item["event"])})
    client.xadd(key, {"event": json.dumps({"ts": T0, "user": "u0", "amount": "lots"})})  # a producer's bad event
    wait_for_verdicts(name, 4 * len(events))
    time.sleep(1.0)  # a last window-closing round

    rows = verdict_rows(name)
    per_event: dict[str, dict[str, StreamVerdict]] = defaultdict(dict)
    for row in rows:
        assert row.detector not in per_event[row.event_id]
        per_event[row.event_id][row.detector] = row
    assert len(per_event) == len(events) and all(len(found) == 4 for found in per_event.values())
    by_point = {(row.key, row.event_time.timestamp()): found for found in per_event.values()
                for row in list(found.values())[:1]}

    def flagged(item, detector: str) -> bool:
        return by_point[(item["event"]["user"], item["event"]["ts"])][detector].outcome == "anomaly"

    spikes = [item for item in events if item["label"] == "spike"]
    assert len(spikes) == len(SPIKES)
    assert all(flagged(item, "robust_zscore") for item in spikes), "every spike is flagged"
    steady = [item for item in events if item["label"] is None and item["event"]["user"] in ("u0", "u1", "u2", "u4")
              and item["minute"] >= 2]
    false_alarms = sum(flagged(item, "robust_zscore") for item in steady)
    assert false_alarms <= 0.01 * len(steady), false_alarms

    shifted = [item for item in events if item["label"] == "shift"]
    assert flagged(shifted[0], "robust_zscore"), "the level shift's first event departs from its window"
    assert sum(flagged(item, "key_baseline") for item in shifted[:60]) >= 10
    # The phase profile absorbs a lasting shift as its events join the history: the first ones are flagged.
    assert flagged(shifted[0], "seasonal_residual") and sum(flagged(item, "seasonal_residual") for item in shifted) >= 3
    changed = [item for item in events if item["label"] == "changed"]
    assert sum(flagged(item, "key_baseline") for item in changed[:60]) >= 10, "the changed key departs from its history"
    before = [item for item in events if item["event"]["user"] == CHANGED_USER and item["minute"] < CHANGED_MINUTE]
    assert not any(flagged(item, "key_baseline") for item in before[60:])
    assert not any(flagged(item, "key_baseline") for item in events if item["event"]["user"] == "u4")
    # The forest, fitted on the warm-up's rows (and refitted as rows come), scores every later event.
    later = events[warm_up + 180:]
    assert all(by_point[(item["event"]["user"], item["event"]["ts"])]["isolation_forest"].outcome != "warming_up"
               for item in later)
    assert sum(flagged(item, "isolation_forest") for item in spikes) >= len(spikes) // 2
    assert sum(flagged(item, "isolation_forest") for item in later if item["label"] is None) <= 0.05 * len(later)

    # Latency is measured from the XADD to the stored verdict.
    assert all(row.decided_at >= row.received_at for row in rows)

    # The producer's bad event was refused, with its reason, and scored nothing.
    described = api.get(f"/api/v1/streams/{name}").get_json()
    assert described["rejected"] == 1 and described["pending"] == 0
    # Refitted as rows came (every 500 events), on the stream's latest rows.
    assert described["forest"]["fits"] >= 2 and described["forest"]["rows"] >= 200
    reason = client.xrange(f"cortex:stream:default:{name}:rejected")[0][1][b"reason"].decode()
    assert reason.startswith("amount: expected a number")

    # Closed windows are stored and served; the spikes' windows count them.
    answer = api.get(f"/api/v1/streams/{name}/windows?from=2026-01-01T00:00:00Z&to=2026-01-01T02:00:00Z"
                     "&limit=5000").get_json()
    windows = answer["windows"]
    assert windows and answer["next_after"] is None
    assert {window["key"] for window in windows} == set(USERS)
    full = [window for window in windows if window["key"] == "u4" and window["count"] == 30]
    assert full, "a 5-minute window of one user holds 30 events"
    assert any(window["anomalies"] >= 1 for window in windows if window["key"] == "u0")
    page = api.get(f"/api/v1/streams/{name}/windows?from=2026-01-01T00:00:00Z&to=2026-01-01T02:00:00Z&limit=5")
    assert len(page.get_json()["windows"]) == 5 and page.get_json()["next_after"] is not None

    # The figures reach the gateway's /metrics.
    metrics = api.get("/metrics").get_data(as_text=True)
    assert f'cortex_stream_event_to_verdict_seconds_count{{stream="{name}",tenant="default"}} {float(len(events))}' \
        in metrics
    assert f'cortex_stream_verdicts_total{{detector="robust_zscore",outcome="anomaly",stream="{name}",tenant="default"}}' \
        in metrics
    assert f'cortex_stream_rejected_events_total{{stream="{name}",tenant="default"}} 1.0' in metrics


def test_a_killed_stream_worker_loses_and_duplicates_no_verdict(api, client):
    name = f"kill-{uuid.uuid4().hex[:8]}"
    declare(api, declaration(name, detectors=[{"kind": "robust_zscore"}, {"kind": "key_baseline"}], alert_rules=[]))
    keys = [f"k{i}" for i in range(10)]
    rng = random.Random(11)
    events = [{"ts": T0 + step, "user": keys[step % 10], "amount": round(rng.gauss(100, 5), 3)} for step in range(6000)]
    first = stream_worker().start()
    try:
        for start in range(0, len(events), 500):
            assert api.post(f"/api/v1/streams/{name}/events", events[start:start + 500]).status_code == 202
        deadline = time.monotonic() + 120
        while verdict_count(name) < 400 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert verdict_count(name) < 2 * len(events), "the worker finished before it could be killed"
        first.kill()  # SIGKILL, mid-stream: its read but unacknowledged events stay pending
    finally:
        first.stop()
    killed_at = verdict_count(name)
    second = stream_worker().start()
    try:
        wait_for_verdicts(name, 2 * len(events))
        deadline = time.monotonic() + 30
        while client.xpending(events_key("default", name), CONSUMER_GROUP)["pending"] and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        second.stop()
    assert 0 < killed_at < 2 * len(events)
    rows = verdict_rows(name)
    per_event = Counter(row.event_id for row in rows)
    assert len(rows) == 2 * len(events) and len(per_event) == len(events) and set(per_event.values()) == {2}
    assert client.xpending(events_key("default", name), CONSUMER_GROUP)["pending"] == 0
    # The per-key state counted every event exactly once, redelivered ones included.
    stream_id = api.get(f"/api/v1/streams/{name}").get_json()["id"]
    prefix = state_prefix("default", name, stream_id)
    assert {key: int(float(client.hget(f"{prefix}:base:{key}", "n"))) for key in keys} == {key: 600 for key in keys}
    cached = json.loads(client.get(f"{prefix}:features:k9"))  # the key's latest feature row, cached
    assert cached["count_1h"] > 0 and cached["value"] == events[-1]["amount"]


def test_bad_events_are_refused_by_index_and_field_and_nothing_is_appended(api, client):
    name = f"bad-{uuid.uuid4().hex[:8]}"
    declare(api, declaration(name, alert_rules=[]))
    good = {"ts": "2026-01-01T00:00:00Z", "user": "u1", "amount": 10.5}
    cases = [
        ({"ts": T0, "user": "u1", "amount": "ten"}, "amount", "expected a number"),
        ({"ts": T0, "user": "u1"}, "amount", "required"),
        ({"ts": "not a time", "user": "u1", "amount": 1}, "ts", "timestamp"),
        ({"ts": T0, "user": "u1", "amount": 1, "password": "x"}, "password", "not a declared field"),
    ]
    for bad, field, words in cases:
        response = api.post(f"/api/v1/streams/{name}/events", [good, good, good, bad, good])
        assert response.status_code == 422, response.get_json()
        error = response.get_json()["error"]
        assert error["code"] == "invalid_event" and error["details"] == {"index": 3, "field": field}
        assert error["message"].startswith(f"events[3].{field}: ") and words in error["message"]
    assert client.xlen(events_key("default", name)) == 0
    for body in ([], "text", [1]):
        response = api.post(f"/api/v1/streams/{name}/events", body)
        assert 400 <= response.status_code < 500 and "error" in response.get_json()
    assert client.xlen(events_key("default", name)) == 0
    assert api.post("/api/v1/streams/no-such-stream/events", good).status_code == 404

    def arrow(table: pa.Table) -> bytes:
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue()

    wrong = arrow(pa.table({"ts": [T0, T0], "user": ["a", "b"], "amount": ["1", "2"]}))
    response = api.client.post(f"/api/v1/streams/{name}/events", data=wrong,
                               headers=api.headers({"Content-Type": "application/vnd.apache.arrow.stream"}))
    assert response.status_code == 422 and response.get_json()["error"]["details"] == {"index": 0, "field": "amount"}
    assert client.xlen(events_key("default", name)) == 0
    right = arrow(pa.table({"ts": pa.array([T0, T0 + 1], pa.float64()), "user": ["a", "b"], "amount": [1.0, 2.0],
                            "channel": [None, "web"]}))
    response = api.client.post(f"/api/v1/streams/{name}/events", data=right,
                               headers=api.headers({"Content-Type": "application/vnd.apache.arrow.stream"}))
    assert response.status_code == 202 and response.get_json()["accepted"] == 2, response.get_json()
    assert client.xlen(events_key("default", name)) == 2
    bad_declaration = api.post("/api/v1/streams", declaration("x-" + name, value_field="user"))
    assert bad_declaration.status_code == 422 and "value_field" in bad_declaration.get_json()["error"]["message"]
    again = api.post("/api/v1/streams", declaration(name, alert_rules=[]))
    assert again.status_code == 200  # the same declaration: unchanged
    other = api.post("/api/v1/streams", declaration(name))
    assert other.status_code == 409 and other.get_json()["error"]["code"] == "stream_exists"


def test_live_view_pushes_verdicts_and_windows_and_ends_cleanly(api, admin_api, worker, client):
    name = f"live-{uuid.uuid4().hex[:8]}"
    declare(api, declaration(name, detectors=[{"kind": "robust_zscore"}], alert_rules=[]))
    deadline = time.monotonic() + 120
    while not api.get(f"/api/v1/streams/{name}").get_json()["consumers"]:  # the worker reads the stream
        assert time.monotonic() < deadline, "the stream worker never read the new stream"
        time.sleep(0.2)
    response = api.get(f"/api/v1/streams/{name}/live?seconds=8")  # subscribed before the events come
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    events = [{"ts": T0 + step * 20, "user": "u1", "amount": 10.0 + step % 3} for step in range(60)]
    assert api.post(f"/api/v1/streams/{name}/events", events).status_code == 202
    body = response.get_data(as_text=True)  # ends after 8 s
    kinds = [line.split(": ", 1)[1] for line in body.splitlines() if line.startswith("event: ")]
    assert kinds[0] == "ready" and kinds[-1] == "end"
    assert "verdicts" in kinds and "window" in kinds
    payloads = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    scored = sum(len(item["events"]) for item in payloads if item.get("type") == "verdicts")
    assert scored == len(events)
    closed = [item for item in payloads if item.get("type") == "window" and item["closed"]]
    assert closed and all(item["key"] == "u1" and item["count"] >= 1 for item in closed)
    # Deleting forgets the stream; its stored history is purged by the stream worker.
    assert api.delete(f"/api/v1/streams/{name}").status_code == 403  # inference_user may not delete
    assert admin_api.delete(f"/api/v1/streams/{name}").status_code == 200
    assert api.get(f"/api/v1/streams/{name}").status_code == 404
    assert client.exists(events_key("default", name)) == 0
    deadline = time.monotonic() + 30
    while verdict_count(name) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert verdict_count(name) == 0


def test_the_shipped_claim_idle_time_claims_only_events_idle_that_long(api, client, monkeypatch):
    """The default CORTEX_STREAM_CLAIM_IDLE (30 s): a dead consumer's events idle 29 s stay its own, at 31 s
    a live consumer claims and scores them. Idle times are set with XCLAIM's IDLE, not waited for."""
    from cortex_tasks.core.settings import reset_settings_cache
    from cortex_tasks.runtime.streams.consumer import StreamConsumer

    monkeypatch.delenv("CORTEX_STREAM_CLAIM_IDLE", raising=False)
    reset_settings_cache()
    name = f"claim-{uuid.uuid4().hex[:8]}"
    declare(api, declaration(name, detectors=[{"kind": "robust_zscore"}], alert_rules=[]))
    events = [{"ts": T0 + step, "user": "u1", "amount": 1.0} for step in range(5)]
    assert api.post(f"/api/v1/streams/{name}/events", events).status_code == 202
    key = events_key("default", name)
    read = client.xreadgroup(CONSUMER_GROUP, "dead-consumer", {key: ">"}, count=10)
    ids = [entry_id for entry_id, _ in read[0][1]]
    live = StreamConsumer(client, consumer_name="live-consumer")
    assert live.settings.claim_idle == 30
    live.refresh()
    client.xclaim(key, CONSUMER_GROUP, "dead-consumer", 0, ids, idle=29_000, justid=True)
    assert live.claim_abandoned() == 0
    client.xclaim(key, CONSUMER_GROUP, "dead-consumer", 0, ids, idle=31_000, justid=True)
    assert live.claim_abandoned() == len(ids)
    assert verdict_count(name) == len(ids)
    assert client.xpending(key, CONSUMER_GROUP)["pending"] == 0


def test_a_worker_that_keeps_its_key_states_judges_as_one_that_rereads_them(api, client):
    """Stream workers keep the key states they updated themselves and reread only keys another worker
    changed since (state.py's versions). Two workers taking turns on one stream's batches, and a third
    alone on a copy of the stream that rereads every state every batch, give the same verdicts."""
    from cortex_tasks.core.streams.declarations import StreamSpec
    from cortex_tasks.runtime.streams.service import StreamRuntime

    spec = StreamSpec.model_validate(declaration("shared", detectors=[
        {"kind": "robust_zscore", "threshold": 6}, {"kind": "key_baseline", "threshold": 4, "min_history": 60},
        {"kind": "seasonal_residual", "period": "20m", "buckets": 4, "threshold": 6}], alert_rules=[]))
    shared_id, alone_id = str(uuid.uuid4()), str(uuid.uuid4())
    first, second = (StreamRuntime(client, "default", f"shared-{shared_id[:8]}", shared_id, spec) for _ in range(2))
    alone_name = f"alone-{alone_id[:8]}"
    events = [item["event"] for item in synthetic_events()][:1500]
    rng = random.Random(3)
    base_ms = int(time.time() * 1000)
    position, turn = 0, 0
    while position < len(events):
        size = rng.randint(1, 40)
        entries = [(f"{base_ms}-{position + n}", {b"event": json.dumps(event).encode()})
                   for n, event in enumerate(events[position:position + size])]
        position += size
        turn = turn if rng.random() < 0.6 else 1 - turn  # runs of batches on one worker, then the other
        shared = (first, second)[turn].process(entries, lateness=1.0)
        # A new runtime each batch: nothing kept, every state read from Redis.
        alone = StreamRuntime(client, "default", alone_name, alone_id, spec).process(entries, lateness=1.0)
        for mine, reread in zip(shared.scored, alone.scored):
            assert [(v.detector, v.outcome) for v in mine.verdicts] == [(v.detector, v.outcome) for v in reread.verdicts]
            for a, b in zip(mine.verdicts, reread.verdicts):
                assert (a.score is None and b.score is None) or a.score == pytest.approx(b.score, rel=1e-9, abs=1e-9)
            assert mine.features == pytest.approx(reread.features, rel=1e-9)
    assert first.state._cache and second.state._cache  # both workers kept states between their batches


def test_a_state_changed_by_another_worker_during_a_batch_is_not_kept(api, client):
    """Worker A reads a key's state, worker B applies a batch of the key, then A applies its own: A's copy
    misses B's events, so A must not keep it; its next read goes to Redis and sees both."""
    from cortex_tasks.runtime.streams.state import StreamState

    prefix = f"cortex:test:state:{uuid.uuid4().hex}"
    first, second = StreamState(client, prefix), StreamState(client, prefix)

    def event(entry: int, at: float, value: float) -> dict:
        return {"id": f"1-{entry}", "arrival": 1000 + entry, "key": "k", "t": at, "v": repr(value),
                "q": repr(value * value), "minute": int(at // 60), "hour": int(at // 3600), "phase": -1,
                "windows": [], "anomalous": False}

    def step(state: StreamState, entry: int, at: float, value: float, read: dict | None = None) -> dict:
        states = read if read is not None else state.read({"k": at - 300})
        states["k"].add(at, value, -1)
        state.apply([event(entry, at, value)], 1, 600.0, states=states)
        return states

    step(first, 1, T0, 10.0)
    assert "k" in first._cache
    racing = first.read({"k": T0 + 10 - 300})  # A reads (its own kept copy) ...
    step(second, 2, T0 + 5, 20.0)  # ... B changes the key ...
    step(first, 3, T0 + 10, 30.0, read=racing)  # ... A applies on top of what it read
    assert "k" not in first._cache
    assert first.read({"k": T0 - 300})["k"].window == [(T0, 10.0), (T0 + 5, 20.0), (T0 + 10, 30.0)]
    client.delete(*client.keys(f"{prefix}:*"))


def test_the_cached_feature_row_is_the_latest_events_whatever_order_events_are_applied_in(client):
    """A dead worker's pending entries are claimed by another once their lease runs out, often after it
    applied newer events of the same keys: the key's cached feature row stays the newest event's."""
    from cortex_tasks.runtime.streams.state import StreamState

    prefix = f"cortex:test:features:{uuid.uuid4().hex}"
    state = StreamState(client, prefix)

    def event(entry: int, at: float) -> dict:
        return {"id": f"1-{entry}", "arrival": 1000 + entry, "key": "k", "t": at, "v": "1.0", "q": "1.0",
                "minute": int(at // 60), "hour": int(at // 3600), "phase": -1, "windows": [], "anomalous": False,
                "features": json.dumps({"at": at})}

    state.apply([event(2, T0 + 10)], 1, 600.0)
    state.apply([event(1, T0)], 1, 600.0)  # the older one, applied later
    assert json.loads(client.get(f"{prefix}:features:k")) == {"at": T0 + 10}
    state.apply([event(3, T0 + 20)], 1, 600.0)
    assert json.loads(client.get(f"{prefix}:features:k")) == {"at": T0 + 20}
    client.delete(*client.keys(f"{prefix}:*"))
