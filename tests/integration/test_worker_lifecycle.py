"""A worker is listed as ready exactly while it can serve: a prefork worker started by hand (`celery -A
cortex_tasks worker -Q gpu`, no profile) is announced only once its pool processes have loaded their models,
and a worker stopped warmly leaves the list at once instead of when its record expires."""
from __future__ import annotations

import json
import time

import redis

from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.worker_records import READY_KEY_PREFIX, ready_workers
from tests.support.processes import WorkerProcess


def _listed(client: redis.Redis, hostname: str) -> bool:
    return any(record.get("hostname") == hostname for record in ready_workers(client))


def test_a_prefork_worker_by_hand_loads_its_models_before_it_is_ready_and_leaves_at_once_on_stop(workers):
    client = redis.Redis.from_url(get_settings().redis_url)
    # Celery's own defaults: the prefork pool, one process per core.
    worker = WorkerProcess("gpu", pool="prefork", concurrency=2, name="by-hand").start(wait_ready=False)
    try:
        status = worker.wait_ready(timeout=300)
        # Announced by the parent once both children had loaded the gpu queue's models.
        assert "all-MiniLM-L6-v2" in status["models"], status
        assert status["pid"] == worker.process.pid
        assert len(worker.children()) == 2
        log = worker.log_tail(400)
        assert "Timed out waiting for UP message" not in log
        assert _listed(client, worker.hostname)

        worker.stop()  # SIGTERM: a warm shutdown
        assert not client.exists(READY_KEY_PREFIX + worker.hostname)
        assert not _listed(client, worker.hostname)
    finally:
        worker.kill()


def test_a_threads_worker_leaves_ready_as_soon_as_its_warm_shutdown_starts(workers):
    client = redis.Redis.from_url(get_settings().redis_url)
    worker = WorkerProcess("training", name="leaving").start()
    try:
        assert _listed(client, worker.hostname)
        stopped_at = time.monotonic()
        worker.stop()
        assert time.monotonic() - stopped_at < 30
        # Gone now, not after the record's two-minute TTL; heartbeats during the shutdown did not revive it.
        time.sleep(3)
        assert client.get(READY_KEY_PREFIX + worker.hostname) is None
        assert json.dumps(worker.hostname) not in json.dumps(ready_workers(client))
    finally:
        worker.kill()
