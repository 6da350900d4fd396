"""Fault injection under a steady load: `python -m bench reliability [--quick] [--soak MINUTES]`.

Starts a stack of its own (Redis, PostgreSQL, a two-process gateway, an nlp worker for predictions and a
batch worker; tests/support/fault_stack.py), keeps a mixed load going (sentiment predictions queued with
wait=0 and small batches), records the id of every accepted job, and runs each scenario:

- worker_sigkill_nlp / worker_sigkill_batch: the worker SIGKILLed mid-jobs, a new one started;
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
- idempotency: 100 concurrent batch submissions with one Idempotency-Key over both gateway processes;
- rate_limit: a key limited to N requests a minute, hit from both gateway processes at once.

Per scenario: jobs accepted, finished, failed (by reason), lost (accepted and neither finished nor failed
within the recovery bound), redelivered (run more than once; the job record keeps one outcome), the API's
worst answer time and status codes while the fault lasted, and seconds until every accepted job was
finished. A table, then the JSON line. With --soak, the load runs for MINUTES more while every process's
resident memory is sampled each 10 s; steady growth fails the run.

Figures taken on a shared or busy machine say little; compare runs on the same quiet machine.
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.support.fault_stack import FaultStack
from tests.support.tcp_relay import TcpRelay

TEXTS = ["The service was excellent and fast.", "A terrible, slow experience.", "It works as described.",
         "I would not recommend it to anyone.", "Quite good value for the price."]


class Load:
    """Client threads sending predictions (wait=0) and small batches; every answer is logged with its time."""

    def __init__(self, stack: FaultStack, clients: int, batch_every: int = 10) -> None:
        self.stack, self.clients, self.batch_every = stack, clients, batch_every
        self.accepted: dict[str, str] = {}  # job id -> kind
        self.answers: list[tuple[float, float, int]] = []  # (started, seconds, status; 0 = no answer)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for number in range(self.clients):
            thread = threading.Thread(target=self._client, args=(number,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _client(self, number: int) -> None:
        sent = 0
        while not self._stop.is_set():
            sent += 1
            started = time.monotonic()
            if sent % self.batch_every == 0:
                kind, path = "batch", "/api/v1/batch/submit"
                body: dict[str, Any] = {"task": "sentiment", "inputs": [f"{t} {uuid.uuid4().hex[:6]}" for t in TEXTS]}
            else:
                kind, path = "predict", "/api/v1/predict"
                body = {"task": "sentiment", "inputs": [f"{TEXTS[sent % len(TEXTS)]} {number}-{sent}"], "wait": 0}
            try:
                answer = self.stack.call("POST", path, body, timeout=10)
                status, job_id = answer.status, (answer.body or {}).get("job_id") if isinstance(answer.body, dict) else None
            except OSError:
                status, job_id = 0, None
            with self._lock:
                self.answers.append((started, time.monotonic() - started, status))
                if status in (200, 202) and job_id:
                    self.accepted[job_id] = kind
            time.sleep(0.05)

    def window(self, since: float, until: float) -> dict[str, Any]:
        with self._lock:
            inside = [(seconds, status) for started, seconds, status in self.answers if since <= started <= until]
        return {"requests": len(inside),
                "worst_answer_seconds": round(max((s for s, _ in inside), default=0.0), 2),
                "statuses": dict(Counter(str(status) for _, status in inside))}


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


def settle(stack: FaultStack, job_ids: list[str], bound: float) -> tuple[dict[str, Any], float | None]:
    """Wait (at most `bound` s) for every job to finish; the tallies and the seconds it took (None: never)."""
    started = time.monotonic()
    while True:
        outcomes = job_outcomes(stack, job_ids)
        unfinished = [j for j in job_ids if outcomes.get(j, ("missing",))[0] not in ("succeeded", "failed", "cancelled")]
        elapsed = time.monotonic() - started
        if not unfinished or elapsed > bound:
            break
        time.sleep(1)
    failed = Counter(outcomes[j][2] or "unknown" for j in job_ids if outcomes.get(j, ("",))[0] == "failed")
    return ({"accepted": len(job_ids),
             "finished": sum(1 for j in job_ids if outcomes.get(j, ("",))[0] == "succeeded"),
             "failed": dict(failed), "lost": len(unfinished),
             "redelivered": sum(1 for j in job_ids if outcomes.get(j, ("", 0))[1] > 1)},
            None if unfinished else round(elapsed, 1))


def scenario(stack: FaultStack, load: Load, name: str, fault, recover, fault_seconds: float,
             bound: float, after=None) -> dict[str, Any]:
    """`after`: what the stack's own upkeep does once the fault is over (the stale-job sweep), its figures
    kept in the row."""
    before = set(load.accepted)
    time.sleep(2)  # load before the fault
    fault_started = time.monotonic()
    fault()
    time.sleep(fault_seconds)
    recover()
    fault_ended = time.monotonic()
    time.sleep(3)  # load after it
    during = load.window(fault_started, fault_ended)
    upkeep = after() if after is not None else None
    job_ids = [job for job in list(load.accepted) if job not in before]
    tallies, recovered = settle(stack, job_ids, bound)
    row = {"scenario": name, **tallies, **during, "fault_seconds": round(fault_ended - fault_started, 1),
           "recovered_seconds": recovered}
    return {**row, "sweep": upkeep} if upkeep is not None else row


def clock_skew(stack: FaultStack, load: Load, bound: float, nlp_env: dict[str, str],
               fault_seconds: float) -> dict[str, Any]:
    """The nlp worker replaced by one whose wall clock is minutes ahead (libfaketime,
    tests/support/clock_skew.py) while the load runs through it, then by one on the true clock again; Redis,
    PostgreSQL and the gateway keep the true clock. Each new worker is ready before the old one is stopped
    warm (SIGTERM), so the queue never lacks a consumer: what the row shows is the skew's, not a restart's."""
    import subprocess

    from tests.support.clock_skew import SKEW_SECONDS, skewed_env

    def swap(old: str, new: str, env: dict[str, str]) -> None:
        stack.start_worker(new, "nlp", pool="threads", concurrency=4, env={**nlp_env, **env})
        worker = stack.workers.pop(old)
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)

    row = scenario(stack, load, "clock_skew", lambda: swap("nlp", "nlp-skewed", skewed_env(SKEW_SECONDS)),
                   lambda: swap("nlp-skewed", "nlp", {}), fault_seconds, bound)
    return {**row, "skew_seconds": SKEW_SECONDS}


def sweep_after_redis_settles(stack: FaultStack) -> dict[str, Any]:
    """The stale-job sweep, run as Beat runs it, once the new Redis has been up long enough for it to compare
    the open jobs with the messages Redis holds (cortex_tasks/runtime/maintenance/lost_messages.py)."""
    import redis

    from cortex_tasks.runtime.maintenance.lost_messages import SETTLE_AFTER_START_SECONDS

    uptime = int(redis.Redis.from_url(stack.env["REDIS_URL"]).info("server")["uptime_in_seconds"])
    time.sleep(max(0, SETTLE_AFTER_START_SECONDS + 1 - uptime))
    code = ("import json; from beat_schedule import MESSAGE; from cortex_tasks.runtime.maintenance.tasks "
            "import sweep_stale_jobs; print(json.dumps(sweep_stale_jobs(**MESSAGE)))")
    found = json.loads(stack.run(code).strip().splitlines()[-1])
    return {key: found[key] for key in ("lost_messages", "lost_resent", "lost_failed") if key in found}


def idempotency(stack: FaultStack) -> dict[str, Any]:
    key = f"bench-{uuid.uuid4().hex}"
    body = {"task": "sentiment", "inputs": ["one job only"]}
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda _: stack.call("POST", "/api/v1/batch/submit", body, timeout=30,
                                                     headers={"Idempotency-Key": key}), range(100)))
    jobs = {a.body.get("job_id") for a in answers if a.status in (200, 201, 202) and isinstance(a.body, dict)}
    return {"scenario": "idempotency", "requests": 100, "distinct_jobs": len(jobs),
            "statuses": dict(Counter(str(a.status) for a in answers)),
            "worst_answer_seconds": round(max(a.seconds for a in answers), 2), "ok": len(jobs) == 1}


def rate_limit(stack: FaultStack, per_minute: int, burst: int) -> dict[str, Any]:
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
    per_minute, burst = 30, 5
    stack = FaultStack(env={"CORTEX_READY_QUEUES": "nlp,batch",
                            "CORTEX_RATE_LIMITS": json.dumps({"bench": {"requests_per_minute": per_minute,
                                                                        "burst_size": burst}})})
    results: list[dict[str, Any]] = []
    bound = 120 if quick else 300
    relay: TcpRelay | None = None
    try:
        stack.start_services()
        stack.start_gateway(workers=2, threads=32)
        # The nlp worker reaches Redis through a relay that the network-stall scenario stops.
        relay = TcpRelay("127.0.0.1", stack.redis_server.port).start()
        through_relay = {"REDIS_URL": relay.url_for(stack.env["REDIS_URL"])}
        stack.start_worker("nlp", "nlp", pool="threads", concurrency=4, env=through_relay)
        stack.start_worker("batch", "batch", pool="prefork", concurrency=2)
        load = Load(stack, clients=4 if quick else 8)
        load.start()
        try:
            def restart(name: str, queues: str, pool: str) -> None:
                stack.start_worker(name, queues, pool=pool, concurrency=4 if pool == "threads" else 2,
                                   wait_ready=False, env=through_relay if name == "nlp" else None)

            results.append(scenario(stack, load, "worker_sigkill_nlp", lambda: stack.kill_worker("nlp"),
                                    lambda: restart("nlp", "nlp", "threads"), 1, bound))
            results.append(scenario(stack, load, "worker_sigkill_batch", lambda: stack.kill_worker("batch"),
                                    lambda: restart("batch", "batch", "prefork"), 1, bound))
            results.append(scenario(stack, load, "gateway_sigkill",
                                    lambda: os.kill(stack.gateway_children()[0], signal.SIGKILL), lambda: None,
                                    3, bound))
            results.append(scenario(stack, load, "redis_restart", stack.kill_redis,
                                    lambda: stack.restart_redis(keep_data=True), 2, bound))
            results.append(scenario(stack, load, "redis_lost", stack.kill_redis,
                                    lambda: stack.restart_redis(keep_data=False), 2, bound,
                                    after=lambda: sweep_after_redis_settles(stack)))
            results.append(scenario(stack, load, "worker_redis_stall", relay.pause, relay.resume, 20, bound))
            results.append(clock_skew(stack, load, bound, through_relay, 20 if quick else 60))
            results.append(scenario(stack, load, "postgres_down", stack.stop_postgres, stack.start_postgres,
                                    5 if quick else 30, bound))
        finally:
            if soak_minutes:
                soaked = soak(stack, load, soak_minutes)
            load.stop()
        results.append(idempotency(stack))
        results.append(rate_limit(stack, per_minute, burst))
    finally:
        stack.close()
        if relay is not None:
            relay.close()
    _print_table(results)
    figures: dict[str, Any] = {"scenarios": results,
                               "lost": sum(r.get("lost", 0) for r in results),
                               "ok": all(r.get("lost", 0) == 0 and r.get("ok", True) for r in results)}
    if soak_minutes:
        figures["soak"] = soaked
        figures["ok"] = figures["ok"] and soaked["ok"]
    return figures


def _print_table(results: list[dict[str, Any]]) -> None:
    columns = ("scenario", "accepted", "finished", "failed", "lost", "redelivered", "worst_answer_seconds",
               "statuses", "recovered_seconds", "ok")
    print(" | ".join(columns))
    for row in results:
        print(" | ".join(json.dumps(row.get(column, "")) if not isinstance(row.get(column), str)
                         else row[column] for column in columns))
