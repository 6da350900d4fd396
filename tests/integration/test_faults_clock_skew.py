"""Clock skew of a few minutes between the gateway and the workers: leases, expiry and rate limits still hold.

A stack of its own (tests/support/fault_stack.py) with three gateways (one on the true clock, one three
minutes ahead, one three minutes behind) and two workers (one ahead, one behind), their clocks shifted
with libfaketime (tests/support/clock_skew.py). Redis and PostgreSQL keep the true clock, as in production
where the skewed host is a gateway's or a worker's.

What broke before (each fixed by comparing times on one clock, core/redis_clock.py and PostgreSQL's now()):
- a job's deadline was written by the gateway's clock and compared by the stale-job sweep with the
  database's: a gateway behind had its jobs failed as stale minutes early;
- a delivered message's time in kombu's `unacked` index was the taking worker's clock, compared with the
  clock of every other worker's restore pass: a worker ahead gave back, and so ran twice, the messages a
  worker behind was still running;
- a message's `enqueued_at` was the publisher's clock, compared with the gateway's for load shedding: a
  gateway behind made every message look minutes old to the others, and they shed all low-priority work;
- an access token's nbf/exp were the issuing gateway's clock, checked by PyJWT against the verifying
  gateway's: a token of a gateway ahead was "not valid yet" everywhere else.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import pytest

from cortex_tasks.core.settings import TokensConfig
from tests.integration.test_faults_workers import HOLD, completions, job_states
from tests.support.clock_skew import (
    SKEW_SECONDS,
    SkewedGateway,
    measured_skew,
    redis_time,
    run_skewed,
    skewed_env,
)
from tests.support.fault_stack import REPO_ROOT, FaultStack
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

PER_MINUTE, BURST = 30, 5
# Shortened so that the test sees what a skew of minutes did to them (each paired below with the shipped
# value): a token's lifetime and the leeway, and the visibility timeout (under twice the skew, so a worker
# ahead would have given back a worker behind's message within the test).
TOKEN_LIFETIME, TOKEN_LEEWAY = 20, 5
VISIBILITY_TIMEOUT = 300
HOLD_QUEUE, HOLD_SECONDS = "hold-skew", 15
DEADLINE_SECONDS = 120  # under the skew: a gateway behind wrote deadlines that had passed already


@pytest.fixture(scope="module")
def skewed() -> Iterator[dict[str, Any]]:
    stack = FaultStack(env={
        "CORTEX_RATE_LIMITS": json.dumps({"limited": {"requests_per_minute": PER_MINUTE, "burst_size": BURST}}),
        "CORTEX_TOKEN_LIFETIME": f"{TOKEN_LIFETIME}s", "CORTEX_TOKEN_LEEWAY": f"{TOKEN_LEEWAY}s",
        "CORTEX_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
        # Shedding by age stays on, with room for a loaded machine between two requests of the test.
        "CORTEX_SHED_MAX_AGE": "30",
    })
    gateways: list[SkewedGateway] = []
    try:
        stack.start_services()
        stack.start_gateway(workers=1, threads=16)
        gateways = [SkewedGateway(stack, SKEW_SECONDS), SkewedGateway(stack, -SKEW_SECONDS)]
        for name, seconds in (("ahead", SKEW_SECONDS), ("behind", -SKEW_SECONDS)):
            stack.start_worker(name, f"nlp,{HOLD_QUEUE}", pool="threads", concurrency=2, wait_ready=False,
                               env=skewed_env(seconds), extra_args=HOLD)
        stack.wait_worker_ready("ahead")
        stack.wait_worker_ready("behind")
        yield {"normal": stack, "ahead": gateways[0].view, "behind": gateways[1].view}
    finally:
        for gateway in gateways:
            gateway.close()
        stack.close()


def test_the_skewed_processes_clocks_are_minutes_off(skewed: dict[str, Any]) -> None:
    """The shift takes (else everything below would pass for nothing), and Redis keeps the true clock."""
    stack = skewed["normal"]
    assert abs(redis_time(stack) - time.time()) < 5
    assert abs(measured_skew(stack, skewed_env(SKEW_SECONDS)) - SKEW_SECONDS) < 5
    assert abs(measured_skew(stack, skewed_env(-SKEW_SECONDS)) + SKEW_SECONDS) < 5


def test_shipped_values_the_shortened_ones_stand_for() -> None:
    """The shipped token lifetime and leeway, and the shipped visibility timeout: the leeway (seconds)
    could never have absorbed a skew of minutes, which is why tokens are now checked on Redis's clock; the
    visibility timeout (hours) only lost minutes of its margin to it."""
    from celeryconfig import LONGEST_HARD_TIME_LIMIT

    shipped = TokensConfig.model_fields
    assert (shipped["lifetime_seconds"].default, shipped["leeway_seconds"].default) == (900, 30)
    assert shipped["leeway_seconds"].default < SKEW_SECONDS
    assert LONGEST_HARD_TIME_LIMIT + 3600 > 2 * SKEW_SECONDS  # the default visibility timeout


SWEEP_WHILE_RUNNING = """
import json, sys, time
from beat_schedule import MESSAGE
from cortex_tasks.core.jobs import store
from cortex_tasks.core.tenancy import tenant_scope
from cortex_tasks.runtime.maintenance.tasks import sweep_stale_jobs
ids = json.loads(sys.stdin.readline())
deadline = time.monotonic() + 60
while True:
    with tenant_scope('default'):
        running = sum(job.status == 'running' for job in store.get_jobs(ids))
    if running == len(ids) or time.monotonic() > deadline:
        break
    time.sleep(0.2)
print(json.dumps({'running_when_swept': running, 'sweep': sweep_stale_jobs(**MESSAGE)}, default=str))
"""


def submit_hold_jobs_behind(stack: FaultStack, count: int, trace: Path) -> list[str]:
    """Hold jobs created and sent from a host three minutes behind, with deadlines shorter than the skew."""
    code = f"""
from cortex_tasks import app
from cortex_tasks.core.jobs import store
from cortex_tasks.core.tenancy import tenant_scope
with tenant_scope('default'):
    for _ in range({count}):
        job, _ = store.create_job(store.NewJob(owner='faults', kind='predict', task='hold',
                                               deadline_seconds={DEADLINE_SECONDS}))
        app.send_task('cortex.testing.hold_job', task_id=job.id, queue={HOLD_QUEUE!r},
                      kwargs={{'job_id': job.id, 'seconds': {HOLD_SECONDS}, 'trace_dir': {str(trace)!r}}})
        print(job.id)
"""
    return run_skewed(stack, code, -SKEW_SECONDS).split()


def predictions(view: FaultStack, count: int, tag: str) -> list[str]:
    ids = []
    for number in range(count):
        answer = view.call("POST", "/api/v1/predict",
                           {"task": "sentiment", "inputs": [f"skew {tag} {number} {uuid.uuid4().hex[:6]}"], "wait": 0})
        assert answer.status == 202, answer
        ids.append(answer.body["job_id"])
    return ids


def test_jobs_through_skewed_gateways_and_workers_finish_exactly_once(skewed: dict[str, Any],
                                                                       tmp_path: Path) -> None:
    """Predictions through every gateway, run by the two skewed workers, and hold jobs sent from a host
    behind and taken by both workers (two each), while the stale-job sweep runs on the true clock: every
    job succeeds once. Before, the sweep failed the hold jobs (deadline passed by the sender's clock), and
    the worker ahead gave back the messages the worker behind was running (their `unacked` time looked
    minutes older than the visibility timeout), which then ran twice."""
    stack = skewed["normal"]
    # The sweeper (true clock) is started first, so that its imports are done when the jobs run (they
    # run 15 s): it is told the hold jobs' ids, waits until all four run, and sweeps as Beat does.
    sweeper = subprocess.Popen([sys.executable, "-c", SWEEP_WHILE_RUNNING], env=stack.env, cwd=REPO_ROOT,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        hold_ids = submit_hold_jobs_behind(stack, 4, tmp_path)
        sweeper.stdin.write(json.dumps(hold_ids) + "\n")
        sweeper.stdin.flush()
        predicted = [*predictions(skewed["ahead"], 10, "ahead"), *predictions(skewed["behind"], 10, "behind"),
                     *predictions(stack, 5, "normal")]
        out, err = sweeper.communicate(timeout=120)
    finally:
        if sweeper.poll() is None:
            sweeper.kill()
    assert sweeper.returncode == 0, err[-3000:]
    swept = json.loads(out.strip().splitlines()[-1])
    # The sweep ran while the four hold jobs were running (else it would have proven nothing). Both workers'
    # restore passes (every 10 s) ran while they held them, too.
    assert swept["running_when_swept"] == len(hold_ids), swept
    def all_finished() -> dict[str, tuple[str, int]] | None:
        found = job_states(stack, hold_ids + predicted)
        return found if all(status in ("succeeded", "failed") for status, _ in found.values()) else None

    states = wait_for(all_finished, 120, "every job to finish", interval=1)
    assert Counter(status for status, _ in states.values()) == {"succeeded": len(hold_ids) + len(predicted)}, \
        (states, swept)
    assert {job_id: attempts for job_id, (_, attempts) in states.items() if attempts > 1} == {}
    assert completions(tmp_path) == len(hold_ids)  # each hold job's work done once
    # The two workers shared the hold jobs: the one behind did hold messages the one ahead looked at.
    started = [path.name for path in tmp_path.glob("started-*")]
    assert len(started) == 2, started


def request_token(view: FaultStack) -> str:
    key_id = view.key.split("_", 2)[1]
    request = urllib.request.Request(
        view.url + "/api/v1/oauth/token", method="POST",
        data=urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": key_id,
                                     "client_secret": view.key}).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(request, timeout=30) as response:  # nosec B310 - loopback
        return json.loads(response.read())["access_token"]


def models_status(view: FaultStack, token: str) -> tuple[int, str | None]:
    answer = view.call("GET", "/api/v1/models", key=token)
    reason = answer.body.get("error", {}).get("details", {}).get("reason") if isinstance(answer.body, dict) else None
    return answer.status, reason


def test_a_token_of_one_gateway_works_on_the_others_for_its_lifetime_and_not_after(
        skewed: dict[str, Any]) -> None:
    tokens = {name: request_token(skewed[name]) for name in ("ahead", "behind", "normal")}
    for issuer, token in tokens.items():
        claims = jwt.decode(token, options={"verify_signature": False})
        # Issued by Redis's clock, whatever the issuing host's.
        assert abs(claims["iat"] - redis_time(skewed["normal"])) < 10, (issuer, claims)
        assert claims["exp"] - claims["iat"] == TOKEN_LIFETIME
        for verifier in ("ahead", "behind", "normal"):
            assert models_status(skewed[verifier], token) == (200, None), (issuer, verifier)
    expires = max(jwt.decode(token, options={"verify_signature": False})["exp"] for token in tokens.values())
    wait_for(lambda: redis_time(skewed["normal"]) > expires + TOKEN_LEEWAY + 3 or None, 60,
             "the tokens to expire", interval=0.5)
    for issuer, token in tokens.items():
        for verifier in ("ahead", "behind", "normal"):
            status, reason = models_status(skewed[verifier], token)
            assert (status, reason) == (401, "expired"), (issuer, verifier, status, reason)


def test_a_rate_limit_counts_once_across_skewed_gateways(skewed: dict[str, Any]) -> None:
    stack = skewed["normal"]
    limited = stack.run("from cortex_tasks.core.auth.keys import create_key; "
                        "print(create_key('inference_user', name='limited', tier='limited').key)").strip()
    views = [skewed["ahead"], skewed["behind"], stack]
    body = {"task": "sentiment", "inputs": ["rate"], "wait": 0}
    started = time.monotonic()
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda n: views[n % 3].call("POST", "/api/v1/predict", body, key=limited,
                                                             timeout=60), range(3 * (PER_MINUTE + BURST))))
    seconds = time.monotonic() - started
    passed = sum(1 for answer in answers if answer.status == 202)
    # The burst and what the one shared bucket refilled meanwhile: N a minute in all, not N per clock.
    assert passed <= BURST + PER_MINUTE * seconds / 60 + 1, (passed, seconds)
    assert {answer.status for answer in answers} <= {202, 429}, Counter(answer.status for answer in answers)


def test_an_idempotency_key_gives_one_job_across_skewed_gateways(skewed: dict[str, Any]) -> None:
    views = [skewed["ahead"], skewed["behind"], skewed["normal"]]
    key, body = f"skew-{uuid.uuid4().hex}", {"task": "sentiment", "inputs": ["one job only"]}
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda n: views[n % 3].call("POST", "/api/v1/batch/submit", body, timeout=60,
                                                             headers={"Idempotency-Key": key}), range(30)))
    assert {answer.status for answer in answers} <= {200, 201, 202}, Counter(a.status for a in answers)
    assert len({answer.body["job_id"] for answer in answers}) == 1


def test_low_priority_work_is_not_shed_for_a_publishers_clock(skewed: dict[str, Any]) -> None:
    """A message that has waited a second is a second old to every gateway, whoever sent it. The gpu
    queue has no worker here, so the messages stay in it while the other gateways look at their age."""
    body = {"task": "embed", "inputs": ["an aged message?"], "wait": 0, "priority": "low"}
    for sender, reader in (("behind", "normal"), ("normal", "ahead"), ("behind", "ahead")):
        assert skewed[sender].call("POST", "/api/v1/predict", body).status == 202, sender
        answer = skewed[reader].call("POST", "/api/v1/predict", body)
        assert answer.status == 202, (sender, reader, answer)
