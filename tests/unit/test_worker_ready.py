"""`cortex worker-ready <kind>`, the worker's own readiness check (compose health checks, Kubernetes
readiness probes): 0 once the worker on this host has announced itself (its models loaded), 1 before,
after it withdrew, and when Redis does not answer. The record is written by the worker's own code."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import redis

from cortex_tasks.core.worker_records import READY_KEY_PREFIX

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "from cortex_tasks.cli import main; main()"]


def worker_ready(*args: str, redis_url: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **({"REDIS_URL": redis_url} if redis_url else {})}
    return subprocess.run([*CLI, "worker-ready", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def announce(node: str, failed: dict | None = None) -> None:
    from cortex_tasks.runtime import worker_signals

    worker_signals._announce(node, ["nlp", "maintenance"], ["spacy-ner"], failed or {}, 1.0)


def test_a_worker_is_ready_once_it_announced_itself_on_this_host():
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    node = f"nlp@{socket.gethostname()}"
    client.delete(READY_KEY_PREFIX + node)
    before = worker_ready("nlp")
    assert before.returncode == 1 and "not ready" in before.stderr
    announce(node)
    try:
        after = worker_ready("nlp")
        assert after.returncode == 0, after.stderr
        assert f"{node}: ready, queues nlp,maintenance" in after.stdout
        # Another kind on the same host is not made ready by this one.
        assert worker_ready("training").returncode == 1
    finally:
        client.delete(READY_KEY_PREFIX + node)
    assert worker_ready("nlp").returncode == 1  # withdrawn (or expired): not ready again


def test_the_host_name_can_be_named_and_failed_models_are_reported():
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    node = "gpu@elsewhere-7"
    announce(node, failed={"smollm2": {"code": "out_of_memory", "message": "m"}})
    try:
        found = worker_ready("gpu", "--hostname", "elsewhere-7")
        assert found.returncode == 0, found.stderr
        assert "smollm2: out_of_memory" in found.stdout
        assert worker_ready("gpu").returncode == 1 or socket.gethostname() == "elsewhere-7"
    finally:
        client.delete(READY_KEY_PREFIX + node)


def test_unreachable_redis_is_not_ready_and_says_so():
    found = worker_ready("gpu", redis_url="redis://127.0.0.1:9/0")
    assert found.returncode == 1
    assert "Redis did not answer" in found.stderr


def test_an_unknown_kind_is_refused_with_the_kinds():
    found = worker_ready("gpuu")
    assert found.returncode == 2
    assert "gpu" in found.stderr
