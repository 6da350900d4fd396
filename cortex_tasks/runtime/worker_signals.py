"""Worker start-up hooks: torch threads per pool type, DB pools reset after fork, a readiness check.

The readiness check loads the models of the queues this worker consumes and only then announces the
worker as ready in Redis (`cortex:workers:<hostname>`), so `/ready` and `cortex up` report real readiness.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from functools import lru_cache

from celery import signals

from cortex_tasks import app
from cortex_tasks.core.catalogue import TASKS, find_model
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.db import reset_engine
from cortex_tasks.core.tenancy import DEFAULT_TENANT, TENANT_ID, enter_tenant, leave_tenant
from cortex_tasks.core.worker_records import READY_KEY_PREFIX, READY_TTL_SECONDS
from cortex_tasks.runtime.inference import compute
from cortex_tasks.runtime.inference.runner import batching_of
from cortex_tasks.runtime.models.loaded import get_model

log = logging.getLogger(__name__)

_prefork_child = False


def _consumed_queues(app) -> list[str]:
    return sorted(app.amqp.queues.consume_from or app.amqp.queues)


def preload_models(queues: list[str]) -> tuple[list[str], dict[str, str]]:
    """Load the default model of every task served here; returns (loaded, {failed model: error}).

    A model that fails to load does not keep the worker from serving the others: requests for it are
    answered by its fallback (or fail clearly), and /ready shows the failure.
    """
    loaded, failed = [], {}
    for name in dict.fromkeys(task.default_model for task in TASKS.values() if task.queue in queues):
        try:
            get_model(name)
            loaded.append(name)
        except Exception as exc:
            log.exception("model %s failed to load", name)
            failed[name] = f"{type(exc).__name__}: {exc}"
    return loaded, failed


# How long libgomp's threads spin waiting for the next parallel operation before they sleep. Its default
# (300,000 spins, several ms here) keeps a core busy after every wide model call, just when the answer
# needs it (database write, reply, gateway); 30,000 still bridges the gaps between the operations of one
# call. Single-client latency bench on two cores (3 runs each): p50 17.4-20.6 ms and p99 34-40 ms with the
# default, p50 15.6-16.8 ms and p99 22-25 ms with 30,000 (10,000: about the same; 100,000: p50 17.3-17.7).
GOMP_SPINCOUNT = "30000"


@signals.worker_init.connect
def _before_models_load(sender=None, **_: object) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # libgomp reads these when torch first loads it, which in a worker happens after this signal.
    os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
    # Every thread starts with torch on one core (the main thread loading models, task threads); only the
    # wide-call thread widens, so the process never holds a second all-core team (inference/compute.py).
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@signals.worker_process_init.connect
def _after_fork(**_: object) -> None:
    global _prefork_child
    _prefork_child = True
    import torch

    # Prefork children share the cores: one torch thread each avoids oversubscription.
    torch.set_num_threads(1)
    compute.configure(1)
    reset_engine()


@signals.task_prerun.connect
def _enter_message_tenant(kwargs=None, **_: object) -> None:
    """A job's task acts for the tenant its message names (job_messages.JobMessage.tenant); a task whose
    message names none acts for no tenant, so a tenant-owned table it touches without entering a scope
    itself (tenancy.all_tenants for maintenance) fails instead of reading every tenant's rows."""
    kwargs = kwargs or {}
    tenant = kwargs.get("tenant")
    if tenant is None and ("job_id" in kwargs or "jobs" in kwargs):
        # A job message queued by a release before tenants: its job, like all data of that time, is default's.
        tenant = DEFAULT_TENANT
    token = enter_tenant(tenant if isinstance(tenant, str) and TENANT_ID.fullmatch(tenant) else None)
    _task_scopes.__dict__.setdefault("tokens", []).append(token)


@signals.task_postrun.connect
def _leave_message_tenant(**_: object) -> None:
    tokens = _task_scopes.__dict__.get("tokens")
    if tokens:
        leave_tenant(tokens.pop())


# Pre- and postrun run in the task's own thread: each pool thread keeps its own stack of scope tokens.
_task_scopes = threading.local()


@signals.worker_ready.connect
def _announce_ready(sender=None, **_: object) -> None:
    queues = _consumed_queues(app)
    started = time.perf_counter()
    pool = app.conf.worker_pool if sender is None else type(sender.pool).__module__
    loaded: list[str] = []
    failed: dict[str, str] = {}
    if "prefork" not in str(pool):
        compute.configure(compute.torch_threads())  # the cores go to model calls through the core budget
        loaded, failed = preload_models(queues)
    hostname = getattr(sender, "hostname", None) or os.uname().nodename
    status = {"hostname": hostname, "queues": queues, "models": loaded, "failed_models": failed,
              "batching": _batching_of(loaded), "pid": os.getpid(),
              "load_seconds": round(time.perf_counter() - started, 2)}
    _redis().set(READY_KEY_PREFIX + hostname, json.dumps(status), ex=READY_TTL_SECONDS)
    log.info("worker ready: %s", status)


def _batching_of(models: list[str]) -> dict[str, dict[str, float]]:
    """How this worker batches each model's requests (shown by GET /api/v1/health/model/{name})."""
    shown = {}
    for name in models:
        batching = batching_of(name, find_model(name), {})
        shown[name] = {"max_batch_size": batching.max_batch_size,
                       "max_wait_ms": round(batching.max_wait_seconds * 1000, 3)}
    return shown


@signals.heartbeat_sent.connect
def _refresh_ready(sender=None, **_: object) -> None:
    # Keep the readiness key alive while the worker lives (heartbeats come every 2 s while events are on);
    # it expires soon after the worker dies.
    hostname = getattr(getattr(sender, "eventer", None), "hostname", None)
    if hostname:
        _redis().expire(READY_KEY_PREFIX + hostname, READY_TTL_SECONDS)


@lru_cache(maxsize=1)
def _redis():
    import redis

    return redis.Redis.from_url(get_settings().redis_url)
