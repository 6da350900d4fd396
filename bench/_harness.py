"""Shared by the benchmarks: a deterministic corpus, a stack started for the run, the raw model baseline
and a load generator run as a separate process (so its CPU use can be reported apart)."""
from __future__ import annotations

import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

WORDS = ("market", "river", "engine", "doctor", "signal", "harvest", "orbit", "ledger", "violin", "meadow",
         "canyon", "lantern", "protein", "glacier", "tariff", "sonnet", "circuit", "harbor", "pilot", "garden",
         "winter", "budget", "station", "forest", "museum", "energy", "village", "climate", "network", "theory")
VERBS = ("describes", "changes", "follows", "protects", "measures", "explains", "improves", "crosses")


def corpus(count: int, seed: int = 7, tag: str = "") -> list[str]:
    """Distinct sentences of 8-20 words (fixed seed); `tag` makes a set distinct from another run's."""
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        length = rng.randint(8, 20)
        words = [rng.choice(WORDS) if k % 3 else rng.choice(VERBS) for k in range(length - 2)]
        texts.append(f"Report {tag}{i} " + " ".join(words) + ".")
    return texts


def machine() -> dict[str, Any]:
    import torch

    return {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__}


def _start(argv: list[str], log: Path, env: dict[str, str], user: str | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                user=user)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, getattr(process, "stop_signal", signal.SIGTERM))
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _wait_http(url: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):  # nosec B310 - the bench's own http:// URL
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer; see {log}") from None
            time.sleep(0.3)


@contextmanager
def services() -> Iterator[dict[str, str]]:
    """Embedded Redis and PostgreSQL for the run (unless REDIS_URL / DATABASE_URL are set)."""
    from cortex_tasks.stack.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

    folder = Path(tempfile.mkdtemp(prefix="cortex-bench-"))
    env = {**os.environ, "CORTEX_DATA_DIR": str(folder / "data"), "CORTEX_ARTIFACT_DIR": str(folder / "artifacts"),
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    started: list[subprocess.Popen] = []
    with ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, folder, True)
        cleanup.callback(lambda: [_stop(p) for p in reversed(started)])
        if not env.get("REDIS_URL"):
            redis_server = EmbeddedRedis(folder / "redis", free_port())
            started.append(_start(redis_server.argv(), folder / "redis.log", env))
            redis_server.wait_ready()
            env["REDIS_URL"] = redis_server.url
        if not env.get("DATABASE_URL"):
            postgres = EmbeddedPostgres(folder / "postgres", free_port())
            process = _start(postgres.argv(), folder / "postgres.log", env, user=postgres.system_user)
            process.stop_signal = signal.SIGINT  # type: ignore[attr-defined]
            started.append(process)
            postgres.wait_ready()
            env["DATABASE_URL"] = postgres.url
        # This process (creating API keys, say) uses the services too. The environment is put back
        # afterwards, so that the next benchmark of `bench all` starts services of its own instead of
        # finding these stopped ones in it.
        shared = ("REDIS_URL", "DATABASE_URL", "CORTEX_DATA_DIR", "CORTEX_ARTIFACT_DIR", "HF_HUB_OFFLINE")
        before = {key: os.environ.get(key) for key in shared}
        cleanup.callback(_restore_environment, before)
        os.environ.update({key: env[key] for key in shared})
        _forget_connections()
        from cortex_tasks.core.storage.migrate import upgrade_to_head

        upgrade_to_head(env["DATABASE_URL"])
        yield {**env, "folder": str(folder)}


def _forget_connections() -> None:
    """Settings and database engines are cached per process; make them follow the environment."""
    from cortex_tasks.core.settings import reset_settings_cache
    from cortex_tasks.core.storage.db import reset_engine

    reset_settings_cache()
    reset_engine()


def _restore_environment(before: dict[str, str | None]) -> None:
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _forget_connections()


@contextmanager
def gateway_and_worker(env: dict[str, str], overrides: dict[str, str] | None = None,
                       web_threads: int | None = None, worker_threads: int = 16,
                       queues: str = "gpu", profile: str | None = None) -> Iterator[str]:
    """The gateway (gunicorn, threads, access log; as many processes as `cortex up` starts) and a worker with
    the gpu profile's shape on `queues`, or the worker `cortex up` starts for `profile` (its queues and
    pool)."""
    import redis

    from cortex_tasks.core.worker_records import READY_KEY_PREFIX
    from cortex_tasks.stack.embedded import free_port
    from gunicorn_conf import ACCESS_LOG_TO_STDOUT
    from gunicorn_conf import command as gateway_command

    env = {**env, **(overrides or {})}
    folder = Path(env["folder"])
    port = free_port()
    tag = f"{port}"
    started: list[subprocess.Popen] = []
    with ExitStack() as cleanup:
        cleanup.callback(lambda: [_stop(p) for p in reversed(started)])
        # gunicorn_conf.py: its processes and threads (CORTEX_WEB_WORKERS / _THREADS, else its defaults), and
        # an access line per request, as `cortex up` and `cortex web` run it.
        started.append(_start(gateway_command(f"127.0.0.1:{port}", None, web_threads, *ACCESS_LOG_TO_STDOUT),
                              folder / f"gateway-{tag}.log", env))
        if profile is None:
            hostname = f"bench-{tag}@localhost"
            worker_argv = ["-A", "cortex_tasks", "worker", "-Q", queues, "-P", "threads", "-c", str(worker_threads),
                           "--prefetch-multiplier=1", "-n", hostname, "--without-gossip", "--without-mingle"]
        else:
            from workers import PROFILES

            hostname = f"{profile}@bench-{tag}"
            worker_argv = PROFILES[profile].celery_argv(f"bench-{tag}")
            # No metrics endpoint: its fixed port may be taken by another stack on this machine.
            env = {**env, **PROFILES[profile].metrics_environment(env), "CORTEX_WORKER_METRICS_PORT": "0"}
        started.append(_start([sys.executable, "-m", "celery", *worker_argv, "-l", "WARNING"],
                              folder / f"worker-{tag}.log", env))
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/health", 120, folder / f"gateway-{tag}.log")
        client = redis.Redis.from_url(env["REDIS_URL"])
        deadline = time.monotonic() + 300
        while not client.exists(READY_KEY_PREFIX + hostname):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not become ready; see {folder / f'worker-{tag}.log'}")
            time.sleep(0.3)
        yield url


def resident_memory_mb(url: str) -> dict[str, list[float]]:
    """Resident memory (MB) of every process of the stack gateway_and_worker started for `url`: the
    gateway's master and processes, the worker and its pool processes. The workers' figures show whether
    each process holds its own copy of the models."""
    import psutil

    port = url.rsplit(":", 1)[1]
    found: dict[str, list[float]] = {"gateway": [], "worker": []}
    for process in psutil.process_iter(["cmdline", "memory_info"]):
        command = " ".join(process.info["cmdline"] or [])
        kind = ("gateway" if f"127.0.0.1:{port}" in command and "gunicorn" in command
                else "worker" if f"bench-{port}" in command and "celery" in command else None)
        if kind and process.info["memory_info"]:
            found[kind].append(round(process.info["memory_info"].rss / 2**20, 1))
    return {kind: sorted(sizes, reverse=True) for kind, sizes in found.items()}


def api_key() -> str:
    from cortex_tasks.core.auth.keys import create_key

    return create_key("inference_user", name="bench", tier="unlimited").key  # measure Cortex, not the limiter


def raw_embedder():
    from cortex_tasks.runtime.models.embedding import SentenceEmbedder

    return SentenceEmbedder("all-MiniLM-L6-v2", "1")


def encode_in_lanes(model, texts: list[str], size: int, lanes: int, batch_size: int | None = None,
                    cortex_encode: bool = False) -> float:
    """Encode `texts` in calls of `size` texts (each run in batches of `batch_size`, default `size`), from
    `lanes` threads at once with one torch thread each; returns the seconds taken. One lane is a plain
    loop in the calling thread, with torch's current thread count.

    The baselines call sentence-transformers' own `encode`; `cortex_encode` calls Cortex's instead
    (SentenceEmbedder.encode: groups of similar length, its own group size), which is what the workers
    run: a diagnostic that separates what the path costs from what the model call gains."""
    import torch

    def lane(part: list[str]) -> None:
        if lanes > 1:
            torch.set_num_threads(1)  # per calling thread once it has run torch (see inference/compute.py)
        for start in range(0, len(part), size):
            if cortex_encode:
                model.encode(part[start:start + size])
            else:
                model.model.encode(part[start:start + size], batch_size=batch_size or size,
                                   normalize_embeddings=True, show_progress_bar=False)

    started = time.perf_counter()
    if lanes == 1:
        lane(texts)
    else:
        share = -(-len(texts) // lanes)
        threads = [threading.Thread(target=lane, args=(texts[i * share:(i + 1) * share],)) for i in range(lanes)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return time.perf_counter() - started


def thread_layouts() -> list[tuple[str, int, int]]:
    """(label, torch threads per call, calls at once) for the raw baselines: one call at a time with torch
    on every core ("2t") or on one ("1t"), and one call per core at once with a thread each ("2x1t")."""
    cores = os.cpu_count() or 1
    layouts = [(f"{threads}t", threads, 1) for threads in sorted({cores, 1}, reverse=True)]
    if cores > 1:
        layouts.append((f"{cores}x1t", 1, cores))
    return layouts


def layout(label: str) -> tuple[int, int]:
    """(torch threads per call, calls at once) of a thread_layouts() label."""
    return next((threads, lanes) for name, threads, lanes in thread_layouts() if name == label)


def raw_limit(model, texts: list[str], batch_sizes: tuple[int, ...] = (16, 32, 64)) -> dict[str, Any]:
    """The raw model in-process at its best batch size and thread layout (thread_layouts(); "2x1t" is the
    layout a busy Cortex worker uses), called the way its library documents (sentence-transformers'
    `encode`): the limit the targets are ratios of. Beside it, as a diagnostic, the same model through
    the workers' own encode at that layout."""
    import torch

    cores = os.cpu_count() or 1
    results: dict[str, float] = {}
    for label, threads, lanes in thread_layouts():
        for size in batch_sizes:
            torch.set_num_threads(threads)
            model.model.encode(texts[:size], batch_size=size)  # warm-up for this shape
            results[f"{label}/b{size}"] = len(texts) / encode_in_lanes(model, texts, size, lanes)
    best = max(results, key=results.get)
    # Diagnostic: the same layout and sizes through the workers' own encode.
    best_layout = best.split("/")[0]
    threads, lanes = layout(best_layout)
    torch.set_num_threads(threads)
    cortex_encode = {f"{best_layout}/b{size}": len(texts) / encode_in_lanes(model, texts, size, lanes,
                                                                              cortex_encode=True)
                     for size in batch_sizes}
    torch.set_num_threads(cores)
    return {"items_per_second": round(results[best], 1), "best": best,
            "by_config": {key: round(value, 1) for key, value in results.items()},
            "cortex_encode_items_per_second": round(max(cortex_encode.values()), 1),
            "cortex_encode_by_config": {key: round(value, 1) for key, value in cortex_encode.items()}}


def raw_single_latency(model, texts: list[str], idle_seconds: float = 0.0) -> dict[str, float]:
    """One sentence per call, in-process: the latency floor. With `idle_seconds`, the model idles that
    long before each call, as it does between the requests of a single client."""
    timings = []
    for text in texts:
        if idle_seconds:
            time.sleep(idle_seconds)
        started = time.perf_counter()
        model.encode([text])
        timings.append((time.perf_counter() - started) * 1000)
    return percentiles(timings)


def percentiles(values_ms: list[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    if not ordered:
        return {"p50_ms": 0.0, "p99_ms": 0.0}
    return {"p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2)}


def run_load(url: str, key: str, texts: list[str], clients: int, items_per_request: int, seconds: float,
             path: str = "/api/v1/predict", repeat: bool = False) -> dict[str, Any]:
    """Run bench/_load.py as its own process; returns its JSON report."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as spec:
        json.dump({"url": url, "key": key, "texts": texts, "clients": clients, "items": items_per_request,
                   "seconds": seconds, "path": path, "repeat": repeat}, spec)
    try:
        out = subprocess.run([sys.executable, "-m", "bench._load", spec.name], capture_output=True, text=True,
                             timeout=seconds + 300, cwd=Path(__file__).resolve().parents[1])
    finally:
        os.unlink(spec.name)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
