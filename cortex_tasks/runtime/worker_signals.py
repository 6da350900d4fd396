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
from cortex_tasks.core.worker_records import READY_KEY_PREFIX, READY_TTL_SECONDS, load_failure
from cortex_tasks.runtime.inference import compute
from cortex_tasks.runtime.inference.runner import batching_of
from cortex_tasks.runtime.metrics import exporter as metrics_exporter
from cortex_tasks.runtime.metrics import instruments as task_metrics
from cortex_tasks.runtime.metrics.resources import record_torch_memory
from cortex_tasks.runtime.models.loaded import get_model

log = logging.getLogger(__name__)

_prefork_child = False


def _consumed_queues(app) -> list[str]:
    return sorted(app.amqp.queues.consume_from or app.amqp.queues)


def preload_models(queues: list[str]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Load the default model of every task served here; returns (loaded, {failed model: {code, message}}).

    A model that fails to load does not keep the worker from serving the others: requests for it are
    answered by its fallback (or fail clearly), and /ready shows the failure (its code; the traceback is
    in this worker's log).
    """
    loaded, failed = [], {}
    for name in dict.fromkeys(task.default_model for task in TASKS.values() if task.queue in queues):
        entry = find_model(name)
        if entry is not None and entry.compute == "remote":
            # An API's client (whisper-1, gpt-image-1) holds nothing worth preloading, and without its key
            # it would show as a failed model on a worker that serves everything else.
            continue
        try:
            get_model(name)
            loaded.append(name)
        except Exception as exc:
            log.exception("model %s failed to load", name)
            failed[name] = load_failure(exc)
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
    # The child loads its models before its first task: the pool sends a child no task until this hook
    # returns (celeryconfig.worker_proc_alive_timeout gives it the time), so no request waits on a load.
    # The parent announces the worker once every child has reported (_announce_when_children_loaded).
    loaded, failed = preload_models(_consumed_queues(app))
    _redis().hset(_children_key(os.getppid()), str(os.getpid()), json.dumps({"models": loaded, "failed": failed}))
    _redis().expire(_children_key(os.getppid()), READY_TTL_SECONDS)


@signals.task_prerun.connect
def _enter_message_tenant(kwargs=None, **_: object) -> None:
    """A job's task acts for the tenant its message names (job_messages.JobMessage.tenant); a task whose
    message names none acts for no tenant, so a tenant-owned table it touches without entering a scope
    itself (tenancy.all_tenants for maintenance) fails instead of reading every tenant's rows."""
    message = kwargs or {}
    tenant = message.get("tenant")
    if tenant is None and ("job_id" in message or "jobs" in message):
        # A job message queued before tenants existed names none: it belongs, like all data of that time,
        # to the default tenant (the message contracts' default), and must still record its job.
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
    hostname = getattr(sender, "hostname", None) or os.uname().nodename
    pool = app.conf.worker_pool if sender is None else type(sender.pool).__module__
    if "prefork" in str(pool):
        # The children load the models (_after_fork); waiting for them here would hold up the consumer.
        concurrency = getattr(sender, "concurrency", None) or 1
        threading.Thread(target=_announce_when_children_loaded, args=(hostname, queues, concurrency),
                         name="announce-ready", daemon=True).start()
        return
    started = time.perf_counter()
    compute.configure(compute.torch_threads())  # the cores go to model calls through the core budget
    loaded, failed = preload_models(queues)
    _announce(hostname, queues, loaded, failed, time.perf_counter() - started)


def _announce_when_children_loaded(hostname: str, queues: list[str], concurrency: int,
                                   timeout: float = 600.0) -> None:
    started = time.perf_counter()
    reports: dict[bytes, bytes] = {}
    while time.perf_counter() - started < timeout and not _stopping.is_set():
        reports = _redis().hgetall(_children_key(os.getpid()))
        if len(reports) >= concurrency:
            break
        time.sleep(0.2)
    if _stopping.is_set():
        return
    loaded: dict[str, None] = {}
    failed: dict[str, dict[str, str]] = {}
    for raw in reports.values():
        report = json.loads(raw)
        loaded.update(dict.fromkeys(report["models"]))
        failed.update(report["failed"])
    if len(reports) < concurrency:
        log.warning("only %d of %d pool processes reported their models within %.0f s", len(reports),
                    concurrency, timeout)
    _announce(hostname, queues, list(loaded), failed, time.perf_counter() - started)


def _announce(hostname: str, queues: list[str], loaded: list[str], failed: dict[str, dict[str, str]],
              load_seconds: float) -> None:
    status = {"hostname": hostname, "queues": queues, "models": loaded, "failed_models": failed,
              "batching": _batching_of(loaded), "pid": os.getpid(), "load_seconds": round(load_seconds, 2)}
    _redis().set(READY_KEY_PREFIX + hostname, json.dumps(status), ex=READY_TTL_SECONDS)
    log.info("worker ready: %s", status)


@signals.worker_shutting_down.connect
def _withdraw_ready(sender=None, **_: object) -> None:
    """A worker stopping warmly takes no new task: it leaves /ready now, not when its record's TTL lapses."""
    _stopping.set()
    if sender:
        _redis().delete(READY_KEY_PREFIX + str(sender), _children_key(os.getpid()))


def _children_key(worker_pid: int) -> str:
    """Where a prefork worker's children report the models they loaded (by the parent's pid: a child does
    not know its worker's node name)."""
    return f"cortex:worker-children:{os.uname().nodename}:{worker_pid}"


_stopping = threading.Event()


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
    if hostname and not _stopping.is_set():
        _redis().expire(READY_KEY_PREFIX + hostname, READY_TTL_SECONDS)


@lru_cache(maxsize=1)
def _redis():
    import redis

    return redis.Redis.from_url(get_settings().redis_url)


# Metrics (runtime/metrics, docs/metrics.md): the endpoint opens as the worker starts, before its models
# load, so Prometheus sees it up while it loads; each task is observed once, by these signals.
@signals.worker_init.connect
def _start_metrics_endpoint(sender=None, **_: object) -> None:
    settings = get_settings()
    port = settings.worker_metrics_port
    if port is None:
        port = metrics_exporter.default_port(getattr(sender, "hostname", None) or "", _consumed_queues(app))
    prefork = "prefork" in str(getattr(sender, "pool_cls", None) or app.conf.worker_pool)
    metrics_exporter.start_exporter(port, settings.worker_metrics_address, prefork)


@signals.task_prerun.connect
def _observe_task_start(task=None, **_: object) -> None:
    if task is not None:
        task_metrics.task_started(task)


@signals.task_postrun.connect
def _observe_task_end(task=None, **_: object) -> None:
    if task is not None:
        task_metrics.task_finished(task)
        record_torch_memory()


@signals.task_failure.connect
def _count_task_failure(sender=None, exception=None, **_: object) -> None:
    if sender is not None and exception is not None:
        task_metrics.task_failed(sender, exception)


@signals.worker_process_shutdown.connect
def _forget_process_metrics(**_: object) -> None:
    metrics_exporter.process_exiting()
