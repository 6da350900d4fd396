"""Fault injection under a steady load: `python -m bench reliability [--quick] [--soak MINUTES]`.

Starts a stack of its own (Redis, PostgreSQL, an S3 server, a two-process gateway, and one worker of each
kind the load needs: nlp for predictions, batch, training, stream; tests/support/fault_stack.py), keeps a
mixed load going (sentiment predictions queued with wait=0, small batches, a small ARIMA forecast training
run every few seconds, and events sent to a declared stream through the API), records the id of every
accepted job and the count of accepted stream events, and runs each scenario of SCENARIOS:

- worker_sigkill_<kind>: that worker SIGKILLed mid-jobs (master and pool at once), a new one started; for
  the stream worker its unacknowledged events are claimed by the new one after the shipped claim idle time;
- gateway_sigkill: one gateway process SIGKILLed mid-request (gunicorn starts another);
- redis_restart: Redis SIGKILLed and started again from its append-only file;
- redis_lost: Redis SIGKILLed and started again empty (its files deleted); the stale-job sweep, run once
  the new Redis has settled, sends again the batches whose messages were lost and fails the predictions
  (`message_lost`: their inputs travelled only in the messages); its counts are in the row's `sweep`;
- worker_redis_stall: the link between the nlp worker and Redis stalled for 20 s (a relay that stops
  forwarding, tests/support/tcp_relay.py), then forwarding again;
- clock_skew: the nlp worker replaced by one whose wall clock is three minutes ahead, under the load for
  20 s (60 s without --quick), then by one on the true clock again;
- postgres_down: PostgreSQL stopped for 30 s (5 s with --quick), then started again;
- object_store_down: the S3 server stopped for 20 s (6 s with --quick) while batches write their results
  and a model version is promoted (refused with 409 `object_store_unavailable`, promoted once it is back);
- disk_full: the training worker's artifact store is a small tmpfs filled to the last byte (a worker of its
  own, with a filesystem object store, since the stack's store is S3): the training runs sent meanwhile fail
  with the reason and register nothing; skipped, with the reason, where no tmpfs can be mounted (not root);
- load_end: once the load stopped, the jobs accepted after the last scenario (no fault: the baseline);
- idempotency: 100 concurrent batch submissions with one Idempotency-Key over both gateway processes;
- rate_limit: a key limited to N requests a minute, hit from both gateway processes at once.

Per scenario: jobs accepted, finished, failed (by reason), lost (accepted and neither finished nor failed
within the recovery bound; for the stream, accepted events without their verdicts), duplicated side effects
(a batch item stored twice, a training job that registered two versions, an event judged twice by one
detector), redelivered (run more than once; the job record keeps one outcome), the API's worst answer time
and status codes while the fault lasted, and seconds until every accepted job was finished. Jobs still open
at a row's recovery bound are looked at again once the load is over: the stale-job sweep's orphan pass,
run when they are five minutes old, fails those whose single message was lost (a worker SIGKILLed as it
took it); the row then keeps `lost_at_bound`, says what became of them in `after_sweep`, and `lost` counts
what is open still. A table, then the JSON line. With --soak, the load runs for MINUTES more while every process's resident memory is sampled
each 10 s; steady growth fails the run.

Figures taken on a shared or busy machine say little; compare runs on the same quiet machine.
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from tests.support.fault_stack import FaultStack
from tests.support.full_disk import fill
from tests.support.s3_outage import StoppableS3
from tests.support.tcp_relay import TcpRelay

TEXTS = ["The service was excellent and fast.", "A terrible, slow experience.", "It works as described.",
         "I would not recommend it to anyone.", "Quite good value for the price."]
FINISHED = ("succeeded", "failed", "cancelled")
STREAM_DETECTORS = [{"kind": "robust_zscore", "threshold": 6}, {"kind": "key_baseline", "threshold": 4}]


@dataclass(frozen=True)
class WorkerKind:
    queues: str
    pool: str
    concurrency: int


# Every worker the stack runs; each is SIGKILLed by a scenario of its own.
WORKERS = {"nlp": WorkerKind("nlp", "threads", 4), "batch": WorkerKind("batch", "prefork", 2),
           "training": WorkerKind("training", "prefork", 1), "stream": WorkerKind("streams", "threads", 2)}


def forecast_rows(days: int = 60) -> list[dict[str, Any]]:
    """A weekly wave on a trend: what the cheapest trainer (ARIMA, one series) fits in a second or two."""
    start = date(2026, 1, 1)
    return [{"ds": (start + timedelta(days=day)).isoformat(), "y": 100 + day * 0.5 + 10 * ((day % 7) - 3)}
            for day in range(days)]


class Load:
    """Client threads sending predictions (wait=0) and small batches, one thread sending a training run every
    `training_every` seconds and one sending stream events; every answer is logged with its time."""

    def __init__(self, stack: FaultStack, clients: int, stream: str, batch_every: int = 10,
                 training_every: float = 15.0, pause: float = 0.2) -> None:
        self.stack, self.clients, self.stream, self.pause = stack, clients, stream, pause
        self.batch_every, self.training_every = batch_every, training_every
        self.accepted: dict[str, str] = {}  # job id -> kind
        self.batch_sizes: dict[str, int] = {}  # batch job id -> items
        self.training_models: dict[str, str] = {}  # training job id -> the model it registers
        self.stream_events = 0  # events the API accepted (202)
        self.answers: list[tuple[float, float, int]] = []  # (started, seconds, status; 0 = no answer)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        targets: list[Callable[[], None]] = [partial(self._client, number) for number in range(self.clients)]
        for target in [*targets, self._trainer, self._streamer]:
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _send(self, path: str, body: Any, timeout: float = 10) -> tuple[int, Any]:
        started = time.monotonic()
        try:
            answer = self.stack.call("POST", path, body, timeout=timeout)
            status, answered = answer.status, answer.body
        except OSError:
            status, answered = 0, None
        with self._lock:
            self.answers.append((started, time.monotonic() - started, status))
        return status, answered if isinstance(answered, dict) else {}

    def _accept(self, status: int, answered: dict[str, Any], kind: str) -> str | None:
        job_id = answered.get("job_id")
        if status in (200, 202) and job_id:
            with self._lock:
                self.accepted[job_id] = kind
            return job_id
        return None

    def _client(self, number: int) -> None:
        sent = 0
        while not self._stop.is_set():
            sent += 1
            if sent % self.batch_every == 0:
                inputs = [f"{t} {uuid.uuid4().hex[:6]}" for t in TEXTS]
                status, answered = self._send("/api/v1/batch/submit", {"task": "sentiment", "inputs": inputs})
                job_id = self._accept(status, answered, "batch")
                if job_id:
                    self.batch_sizes[job_id] = len(inputs)
            else:
                body = {"task": "sentiment", "inputs": [f"{TEXTS[sent % len(TEXTS)]} {number}-{sent}"], "wait": 0}
                self._accept(*self._send("/api/v1/predict", body), "predict")
            # A steady pace the stack serves with room to spare: predictions queued with wait=0 faster than
            # the nlp worker runs them pile up, and a backlog still draining at the recovery bound would be
            # counted lost though nothing was (a two-core machine runs four workers and two gateways here).
            time.sleep(self.pause)

    def _trainer(self) -> None:
        rows = forecast_rows()
        while not self._stop.wait(self.training_every):
            model = f"bench-forecast-{uuid.uuid4().hex[:8]}"
            status, answered = self._send("/api/v1/training/submit", {
                "kind": "forecast", "model": model, "dataset": {"rows": rows},
                "params": {"method": "arima", "horizon": 7}})
            job_id = self._accept(status, answered, "training")
            if job_id:
                self.training_models[job_id] = model

    def _streamer(self) -> None:
        sent = 0
        while not self._stop.wait(0.5):
            events = []
            for _ in range(5):
                sent += 1
                events.append({"ts": 1_767_225_600 + sent, "device": f"d{sent % 7}",
                               "reading": 100 + (sent % 7) * 10 + (sent % 3)})
            status, answered = self._send(f"/api/v1/streams/{self.stream}/events", events)
            if status == 202:
                with self._lock:
                    self.stream_events += int(answered.get("accepted", 0))

    def window(self, since: float, until: float) -> dict[str, Any]:
        with self._lock:
            inside = [(seconds, status) for started, seconds, status in self.answers if since <= started <= until]
        return {"requests": len(inside),
                "worst_answer_seconds": round(max((s for s, _ in inside), default=0.0), 2),
                "statuses": dict(Counter(str(status) for _, status in inside))}


@dataclass
class Bench:
    """What every scenario works on: the stack, its load, the relay in front of the nlp worker's Redis, the
    S3 server, and the recovery bound."""

    stack: FaultStack
    load: Load
    relay: TcpRelay
    s3: StoppableS3
    quick: bool
    bound: float
    stream_missing: int = 0  # accepted stream events without their verdicts after the last scenario
    last_lost_at: float = 0.0  # when a row last found jobs still open at its recovery bound (monotonic)
    checked: set[str] = field(default_factory=set)  # jobs a row has accounted for

    def unchecked(self) -> list[str]:
        """The jobs accepted since the last row took its jobs (those accepted while the last scenario
        settled included): every accepted job is accounted for by exactly one row."""
        fresh = [job for job in list(self.load.accepted) if job not in self.checked]
        self.checked.update(fresh)
        return fresh

    def worker_env(self, name: str) -> dict[str, str] | None:
        # The nlp worker reaches Redis through a relay that the network-stall scenario stops.
        return {"REDIS_URL": self.relay.url_for(self.stack.env["REDIS_URL"])} if name == "nlp" else None

    def start_worker(self, name: str, wait_ready: bool = True, env: dict[str, str] | None = None) -> None:
        kind = WORKERS[name]
        self.stack.start_worker(name, kind.queues, pool=kind.pool, concurrency=kind.concurrency,
                                wait_ready=wait_ready, env={**(self.worker_env(name) or {}), **(env or {})})


def job_outcomes(stack: FaultStack, job_ids: list[str]) -> dict[str, tuple[str, int, str | None]]:
    """id -> (status, attempts, error code), read from PostgreSQL in one query per 500 ids."""
    path = stack.folder / f"ids-{uuid.uuid4().hex}.json"
    path.write_text(json.dumps(job_ids))
    code = f"""
import json
from cortex_tasks.core.jobs import store
from cortex_tasks.core.tenancy import all_tenants
ids = json.load(open({str(path)!r}))
with all_tenants():
    for start in range(0, len(ids), 500):
        for job in store.get_jobs(ids[start:start + 500]):
            print(json.dumps([job.id, job.status, job.attempts, (job.error or {{}}).get("code")]))
"""
    rows = [json.loads(line) for line in stack.run(code).splitlines() if line.startswith("[")]
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


def stream_tally(stack: FaultStack, stream: str) -> tuple[int, int]:
    """(events judged by every detector, (event, detector) pairs stored more than once)."""
    code = f"""
from sqlalchemy import func, select
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import StreamVerdict
from cortex_tasks.core.tenancy import tenant_scope
with tenant_scope('default'), session_scope() as session:
    per_event = select(StreamVerdict.event_id).where(StreamVerdict.stream == {stream!r}).group_by(
        StreamVerdict.event_id).having(func.count(func.distinct(StreamVerdict.detector)) == {len(STREAM_DETECTORS)})
    judged = session.scalar(select(func.count()).select_from(per_event.subquery()))
    pairs = select(StreamVerdict.event_id, StreamVerdict.detector).where(StreamVerdict.stream == {stream!r}).group_by(
        StreamVerdict.event_id, StreamVerdict.detector).having(func.count() > 1)
    print(judged, session.scalar(select(func.count()).select_from(pairs.subquery())))
"""
    judged, twice = stack.run(code).split()[-2:]
    return int(judged), int(twice)


def duplicated_results(bench: Bench, outcomes: dict[str, tuple[str, int, str | None]]) -> int:
    """Side effects stored twice: a finished batch whose results hold an item more than once (or not exactly
    its inputs), a training job whose model has more than one version."""
    twice = 0
    for job_id, size in list(bench.load.batch_sizes.items()):
        if outcomes.get(job_id, ("",))[0] != "succeeded":
            continue
        page = bench.stack.call("GET", f"/api/v1/batch/results/{job_id}?size={size}", timeout=30)
        indexes = [item["index"] for item in page.body.get("items", [])] if isinstance(page.body, dict) else []
        twice += sorted(indexes) != list(range(size))
    models = {bench.load.training_models[j]: j for j in outcomes if j in bench.load.training_models}
    if models:
        code = f"""
from cortex_tasks.core.registry import service
from cortex_tasks.core.tenancy import tenant_scope
with tenant_scope('default'):
    for name in {sorted(models)!r}:
        print(name, len(service.list_versions(name)))
"""
        twice += sum(int(line.split()[1]) > 1 for line in bench.stack.run(code).splitlines() if line.strip())
    return twice


def settle(bench: Bench, job_ids: list[str], bound: float) -> tuple[dict[str, Any], float | None]:
    """Wait (at most `bound` s) for every job to finish and every accepted stream event to be judged; the
    tallies and the seconds it took (None: never)."""
    stack, stream = bench.stack, bench.load.stream
    started = time.monotonic()
    while True:
        outcomes = job_outcomes(stack, job_ids)
        unfinished = [j for j in job_ids if outcomes.get(j, ("missing",))[0] not in FINISHED]
        accepted_events = bench.load.stream_events
        judged, judged_twice = stream_tally(stack, stream)
        elapsed = time.monotonic() - started
        if (not unfinished and judged >= accepted_events) or elapsed > bound:
            break
        time.sleep(1)
    if unfinished:
        bench.last_lost_at = time.monotonic()
    missing = max(0, accepted_events - judged)
    events_lost, bench.stream_missing = max(0, missing - bench.stream_missing), missing
    failed = Counter(outcomes[j][2] or "unknown" for j in job_ids if outcomes.get(j, ("",))[0] == "failed")
    kinds = Counter(bench.load.accepted.get(j, "?") for j in job_ids)
    with_side_effects = {j: outcomes[j] for j in job_ids
                         if j in outcomes and bench.load.accepted.get(j) in ("batch", "training")}
    return ({"accepted": len(job_ids), "kinds": dict(kinds),
             "finished": sum(1 for j in job_ids if outcomes.get(j, ("",))[0] == "succeeded"),
             "failed": dict(failed), "lost": len(unfinished) + events_lost,
             # What the lost jobs are and where they stopped ("predict queued": 3), to tell the causes apart.
             "lost_jobs": dict(Counter(f"{bench.load.accepted.get(j, '?')} {outcomes.get(j, ('missing',))[0]}"
                                       for j in unfinished)),
             "lost_ids": unfinished,  # to follow in the logs and Redis's append-only file, and for the sweep
             "duplicated": duplicated_results(bench, with_side_effects) + judged_twice,
             "redelivered": sum(1 for j in job_ids if outcomes.get(j, ("", 0))[1] > 1),
             "stream_events": {"accepted": accepted_events, "judged": judged, "lost": events_lost}},
            None if unfinished or missing else round(elapsed, 1))


def scenario(bench: Bench, name: str, fault: Callable[[], Any], recover: Callable[[], Any],
             fault_seconds: float, after: Callable[[], Any] | None = None) -> dict[str, Any]:
    """`after`: what the stack's own upkeep does once the fault is over (the stale-job sweep), or what the
    scenario checks then; its figures kept in the row."""
    load = bench.load
    time.sleep(2)  # load before the fault
    fault_started = time.monotonic()
    fault()
    time.sleep(fault_seconds)
    recover()
    fault_ended = time.monotonic()
    time.sleep(3)  # load after it
    during = load.window(fault_started, fault_ended)
    upkeep = after() if after is not None else None
    tallies, recovered = settle(bench, bench.unchecked(), bench.bound)
    row = {"scenario": name, **tallies, **during, "fault_seconds": round(fault_ended - fault_started, 1),
           "recovered_seconds": recovered}
    return {**row, "after": upkeep} if upkeep is not None else row


# --- the scenarios: each takes the bench and gives its row ---


def worker_sigkill(bench: Bench, name: str) -> dict[str, Any]:
    return scenario(bench, f"worker_sigkill_{name}", lambda: bench.stack.kill_worker(name),
                    lambda: bench.start_worker(name, wait_ready=False), 1)


def gateway_sigkill(bench: Bench) -> dict[str, Any]:
    return scenario(bench, "gateway_sigkill", lambda: os.kill(bench.stack.gateway_children()[0], signal.SIGKILL),
                    lambda: None, 3)


def redis_restart(bench: Bench) -> dict[str, Any]:
    return scenario(bench, "redis_restart", bench.stack.kill_redis,
                    lambda: bench.stack.restart_redis(keep_data=True), 2)


def redis_lost(bench: Bench) -> dict[str, Any]:
    return scenario(bench, "redis_lost", bench.stack.kill_redis, lambda: bench.stack.restart_redis(keep_data=False),
                    2, after=lambda: sweep_after_redis_settles(bench.stack))


def worker_redis_stall(bench: Bench) -> dict[str, Any]:
    return scenario(bench, "worker_redis_stall", bench.relay.pause, bench.relay.resume, 20)


def clock_skew(bench: Bench) -> dict[str, Any]:
    """The nlp worker replaced by one whose wall clock is minutes ahead (libfaketime,
    tests/support/clock_skew.py) while the load runs through it, then by one on the true clock again; Redis,
    PostgreSQL and the gateway keep the true clock. Each new worker is ready before the old one is stopped
    warm (SIGTERM), so the queue never lacks a consumer: what the row shows is the skew's, not a restart's."""
    from tests.support.clock_skew import SKEW_SECONDS, skewed_env

    def swap(old: str, new: str, env: dict[str, str]) -> None:
        kind = WORKERS["nlp"]
        bench.stack.start_worker(new, kind.queues, pool=kind.pool, concurrency=kind.concurrency,
                                 env={**(bench.worker_env("nlp") or {}), **env})
        worker = bench.stack.workers.pop(old)
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)

    row = scenario(bench, "clock_skew", lambda: swap("nlp", "nlp-skewed", skewed_env(SKEW_SECONDS)),
                   lambda: swap("nlp-skewed", "nlp", {}), 20 if bench.quick else 60)
    return {**row, "skew_seconds": SKEW_SECONDS}


def postgres_down(bench: Bench) -> dict[str, Any]:
    return scenario(bench, "postgres_down", bench.stack.stop_postgres, bench.stack.start_postgres,
                    5 if bench.quick else 30)


def object_store_down(bench: Bench) -> dict[str, Any]:
    """Batches of the load write their results while the store is away; a promotion is tried meanwhile
    (refused: its artifact cannot be read) and again once the store is back (promoted)."""
    model = f"bench-promoted-{uuid.uuid4().hex[:6]}"
    first, second = (register_blob(bench.stack, model, f"artifact {n}".encode()) for n in (1, 2))
    promotions: dict[str, Any] = {"before": promote(bench.stack, model, first).status}

    def fault() -> None:
        bench.s3.stop()
        answer = promote(bench.stack, model, second)
        promotions["during"] = f"{answer.status} {(answer.body or {}).get('error', {}).get('code', '')}".strip()

    def promoted_again() -> dict[str, Any]:
        promotions["after"] = promote(bench.stack, model, second).status
        promotions["serving"] = production_version(bench.stack, model)
        promotions["ok"] = promotions["serving"] == second and promotions["after"] == 200 \
            and promotions["during"].startswith("409")
        return promotions

    row = scenario(bench, "object_store_down", fault, bench.s3.start, 6 if bench.quick else 20,
                   after=promoted_again)
    return {**row, "ok": promotions["ok"]}


def disk_full(bench: Bench) -> dict[str, Any]:
    """The stack's artifact store is S3; a training worker of its own writes to a filesystem store on a small
    tmpfs instead, filled to the last byte while the load's training runs reach it."""
    mount = Path(bench.stack.folder) / "full-disk"
    mount.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                             check=False, capture_output=True, text=True)
    if mounted.returncode != 0:
        return {"scenario": "disk_full", "skipped": f"cannot mount a tmpfs (root needed): {mounted.stderr.strip()}"}
    filler = mount / "filler"
    local_store = {"CORTEX_ARTIFACT_DIR": str(mount), "MINIO_ENDPOINT": ""}
    checked: dict[str, Any] = {}

    def fault() -> None:
        bench.stack.kill_worker("training")
        fill(filler)
        bench.start_worker("training", env=local_store)

    def recover() -> None:
        filler.unlink()
        bench.stack.kill_worker("training")
        bench.start_worker("training", wait_ready=False)

    def nothing_half_written() -> dict[str, Any]:
        stray = [p.name for p in mount.rglob("*") if p.is_file() and p.name.startswith(".")]
        checked.update(stray_files=len(stray), ok=not stray)
        return checked

    try:
        row = scenario(bench, "disk_full", fault, recover, 10 if bench.quick else 30, after=nothing_half_written)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    # Training runs failed meanwhile must say why (no space), not vanish or be registered half-written.
    return {**row, "ok": checked.get("ok", False)}


def drained(bench: Bench) -> dict[str, Any]:
    """The jobs accepted after the last scenario (while it settled, and during a soak), once the load
    stopped: no fault, so what every row is compared with."""
    tallies, recovered = settle(bench, bench.unchecked(), bench.bound)
    return {"scenario": "load_end", **tallies, "recovered_seconds": recovered}


def idempotency(bench: Bench) -> dict[str, Any]:
    stack = bench.stack
    key = f"bench-{uuid.uuid4().hex}"
    body = {"task": "sentiment", "inputs": ["one job only"]}
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda _: stack.call("POST", "/api/v1/batch/submit", body, timeout=30,
                                                     headers={"Idempotency-Key": key}), range(100)))
    jobs = {a.body.get("job_id") for a in answers if a.status in (200, 201, 202) and isinstance(a.body, dict)}
    return {"scenario": "idempotency", "requests": 100, "distinct_jobs": len(jobs),
            "statuses": dict(Counter(str(a.status) for a in answers)),
            "worst_answer_seconds": round(max(a.seconds for a in answers), 2), "ok": len(jobs) == 1}


RATE_PER_MINUTE, RATE_BURST = 30, 5


def rate_limit(bench: Bench) -> dict[str, Any]:
    stack, per_minute, burst = bench.stack, RATE_PER_MINUTE, RATE_BURST
    limited = stack.run("from cortex_tasks.core.auth.keys import create_key; "
                        "print(create_key('inference_user', name='bench-limited', tier='bench').key)").strip()
    body = {"task": "sentiment", "inputs": ["rate"], "wait": 0}
    sent = 3 * (per_minute + burst)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: stack.call("POST", "/api/v1/predict", body, key=limited, timeout=30),
                                range(sent)))
    passed = sum(1 for a in answers if a.status in (200, 202))
    # Within the few seconds of the burst, the bucket lets through its burst and a little refill.
    allowed = burst + per_minute * max(a.seconds for a in answers) / 60 + 2
    return {"scenario": "rate_limit", "requests": sent, "passed": passed, "limit": f"{per_minute}/min burst {burst}",
            "statuses": dict(Counter(str(a.status) for a in answers)),
            "has_retry_after": all("Retry-After" in a.headers for a in answers if a.status == 429),
            "ok": passed <= allowed}


# Run under the load, in this order (redis_lost after the others that need Redis's data).
SCENARIOS: list[Callable[[Bench], dict[str, Any]]] = [
    *(partial(worker_sigkill, name=name) for name in WORKERS),
    gateway_sigkill,
    redis_restart,
    redis_lost,
    worker_redis_stall,
    clock_skew,
    postgres_down,
    object_store_down,
    disk_full,
]
# Run once the load has stopped: they count their own requests.
AFTER_LOAD: list[Callable[[Bench], dict[str, Any]]] = [idempotency, rate_limit]


# --- helpers of the scenarios ---


def register_blob(stack: FaultStack, model: str, content: bytes) -> int:
    code = f"""
from cortex_tasks.core.registry import service
from cortex_tasks.core.tenancy import tenant_scope
with tenant_scope('default'):
    print(service.register_version({model!r}, task='sentiment', framework='faults-blob', artifact={content!r}).version)
"""
    return int(stack.run(code).strip().splitlines()[-1])


def production_version(stack: FaultStack, model: str) -> int | None:
    code = f"""
import json
from cortex_tasks.core.registry import service
from cortex_tasks.core.tenancy import tenant_scope
with tenant_scope('default'):
    print(json.dumps([v.version for v in service.list_versions({model!r}) if v.stage == 'production']))
"""
    versions = json.loads(stack.run(code).strip().splitlines()[-1])
    return versions[0] if versions else None


def promote(stack: FaultStack, model: str, version: int) -> Any:
    return stack.call("POST", f"/api/v1/models/{model}/versions/{version}/promote",
                      {"stage": "production", "wait": 60}, timeout=90)


def run_sweep(stack: FaultStack) -> dict[str, Any]:
    """The stale-job sweep, as Beat runs it, in a process of the stack."""
    code = ("import json; from beat_schedule import MESSAGE; from cortex_tasks.runtime.maintenance.tasks "
            "import sweep_stale_jobs; print(json.dumps(sweep_stale_jobs(**MESSAGE)))")
    return json.loads(stack.run(code).strip().splitlines()[-1])


def sweep_orphans(bench: Bench, results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Jobs a row found still open at its recovery bound, once the stale-job sweep's orphan pass can see
    them (older than ORPHAN_AGE_SECONDS; runtime/maintenance/lost_messages.py): a job whose single message
    was lost (a worker killed as it took it) is failed `message_lost` there, in production at most one sweep
    period later. Each row keeps its count at the bound (`lost_at_bound`); `lost` becomes what is still
    open after the pass, and `after_sweep` says what became of the others."""
    from cortex_tasks.runtime.maintenance.lost_messages import ORPHAN_AGE_SECONDS

    open_ids = [job for row in results for job in row.get("lost_ids", [])]
    if not open_ids:
        return None
    time.sleep(max(0.0, bench.last_lost_at + ORPHAN_AGE_SECONDS + 5 - time.monotonic()))
    found = run_sweep(bench.stack)
    outcomes = job_outcomes(bench.stack, open_ids)
    for row in results:
        ids = row.get("lost_ids") or []
        if not ids:
            continue
        still_open = [job for job in ids if outcomes.get(job, ("missing",))[0] not in FINISHED]
        row["lost_at_bound"] = row["lost"]
        row["lost"] -= len(ids) - len(still_open)
        row["after_sweep"] = dict(Counter(" ".join(filter(None, (outcomes[job][0], outcomes[job][2])))
                                          for job in ids if job not in still_open))
    return {key: found[key] for key in ("orphaned_messages", "orphans_resent", "orphans_failed") if key in found}


def sweep_after_redis_settles(stack: FaultStack) -> dict[str, Any]:
    """The stale-job sweep, run as Beat runs it, once the new Redis has been up long enough for it to compare
    the open jobs with the messages Redis holds (cortex_tasks/runtime/maintenance/lost_messages.py)."""
    import redis

    from cortex_tasks.runtime.maintenance.lost_messages import SETTLE_AFTER_START_SECONDS

    uptime = int(redis.Redis.from_url(stack.env["REDIS_URL"]).info("server")["uptime_in_seconds"])
    time.sleep(max(0, SETTLE_AFTER_START_SECONDS + 1 - uptime))
    found = run_sweep(stack)
    return {key: found[key] for key in ("lost_messages", "lost_resent", "lost_failed") if key in found}


def declare_stream(stack: FaultStack) -> str:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    answer = stack.call("POST", "/api/v1/streams", {
        "name": name, "fields": [{"name": "ts", "type": "timestamp"}, {"name": "device", "type": "string"},
                                 {"name": "reading", "type": "number"}],
        "timestamp_field": "ts", "key_fields": ["device"], "value_field": "reading", "detectors": STREAM_DETECTORS})
    if answer.status not in (200, 201):
        raise RuntimeError(f"the stream could not be declared: {answer}")
    return name


def soak(stack: FaultStack, load: Load, minutes: float) -> dict[str, Any]:
    import psutil

    pids = {"gateway": stack.gateway_process.pid, **{name: p.pid for name, p in stack.workers.items()}}
    samples: dict[str, list[float]] = {name: [] for name in pids}
    deadline = time.monotonic() + minutes * 60
    while time.monotonic() < deadline:
        for name, pid in pids.items():
            try:
                root = psutil.Process(pid)
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            except psutil.Error:
                continue
            samples[name].append(rss / 2**20)
        time.sleep(10)
    growth = {}
    for name, values in samples.items():
        if len(values) < 6:
            continue
        # Steady growth: the last third's median above the middle third's, and that above the first's by
        # more than 5% each (a warm-up jump alone is not a leak).
        third = len(values) // 3
        first, middle, last = (statistics.median(values[:third]), statistics.median(values[third:2 * third]),
                               statistics.median(values[2 * third:]))
        growth[name] = {"first_mb": round(first), "middle_mb": round(middle), "last_mb": round(last),
                        "leak": middle > first * 1.05 and last > middle * 1.05}
    return {"minutes": minutes, "processes": growth, "ok": not any(g["leak"] for g in growth.values())}


def run(quick: bool, soak_minutes: float | None = None) -> dict[str, Any]:
    s3 = StoppableS3()
    s3.start()
    stack = FaultStack(env={**s3.env(f"bench-{uuid.uuid4().hex[:8]}"),
                            "CORTEX_READY_QUEUES": ",".join(kind.queues for kind in WORKERS.values()),
                            "CORTEX_RATE_LIMITS": json.dumps({"bench": {"requests_per_minute": RATE_PER_MINUTE,
                                                                        "burst_size": RATE_BURST}})})
    results: list[dict[str, Any]] = []
    relay: TcpRelay | None = None
    soaked: dict[str, Any] = {}
    orphans: dict[str, Any] | None = None
    try:
        stack.start_services()
        stack.start_gateway(workers=2, threads=32)
        relay = TcpRelay("127.0.0.1", stack.redis_server.port).start()
        load = Load(stack, clients=4 if quick else 8, stream=declare_stream(stack),
                    training_every=15 if quick else 10)
        bench = Bench(stack, load, relay, s3, quick, bound=120 if quick else 300)
        for name in WORKERS:
            bench.start_worker(name)
        load.start()
        try:
            for each in SCENARIOS:
                results.append(each(bench))
                print(f"reliability: {json.dumps(results[-1])}", file=sys.stderr, flush=True)
        finally:
            if soak_minutes:
                soaked = soak(stack, load, soak_minutes)
            load.stop()
        results.append(drained(bench))
        for each in AFTER_LOAD:
            results.append(each(bench))
        orphans = sweep_orphans(bench, results)
    finally:
        stack.close()
        if relay is not None:
            relay.close()
        s3.stop()
    _print_table(results)
    figures: dict[str, Any] = {"scenarios": results,
                               "lost": sum(r.get("lost", 0) for r in results),
                               "duplicated": sum(r.get("duplicated", 0) for r in results),
                               "ok": all(r.get("lost", 0) == 0 and r.get("duplicated", 0) == 0 and r.get("ok", True)
                                         for r in results)}
    if orphans is not None:
        figures["orphan_sweep"] = orphans
    if soak_minutes:
        figures["soak"] = soaked
        figures["ok"] = figures["ok"] and soaked["ok"]
    return figures


def _print_table(results: list[dict[str, Any]]) -> None:
    columns = ("scenario", "accepted", "finished", "failed", "lost", "lost_at_bound", "after_sweep", "duplicated",
               "redelivered",
               "worst_answer_seconds", "statuses", "recovered_seconds", "ok", "skipped")
    print(" | ".join(columns))
    for row in results:
        print(" | ".join(json.dumps(row.get(column, "")) if not isinstance(row.get(column), str)
                         else row[column] for column in columns))
