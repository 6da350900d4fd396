"""Cortex beside its peers, serving the same model on the same machine in one run.

The bundled all-MiniLM-L6-v2, served three ways one after another (each started as its users start it,
warmed, measured, stopped; never two at once) and driven by the same closed-loop load generator as the
other benchmarks, one sentence per request, no text ever sent twice (so no answer comes from a cache):
- a plain Celery round trip (bench/_peers_celery.py): a Flask app under gunicorn that sends one Celery
  task per request to a prefork worker of 2 processes holding the model, over the same Redis, and waits
  for the result; and the same round trip with a task that returns at once (the no-op), at 1 client;
- BentoML with adaptive batching (bench/_peers_bento.py, `bentoml serve`), when bentoml is installed
  (the `peers` extra); otherwise its row says why it was skipped;
- Cortex, started as `bench throughput` starts it, with the answer cache off.
Baseline (same run): the model in-process, one sentence per call (the 1-client figure) and at its best
batch size and thread layout (the limit, as `bench throughput` measures it). Each figure's ratio is to
that limit. Clients: 1, 16 and 64.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench._harness import (
    _start,
    _stop,
    api_key,
    corpus,
    gateway_and_worker,
    machine,
    percentiles,
    raw_embedder,
    raw_limit,
    raw_single_latency,
    run_load,
    services,
)
from bench.throughput import MAX_ITEMS_PER_SECOND, sample_of

LEVELS = (1, 16, 64)
ROOT = Path(__file__).resolve().parents[1]
# One gunicorn thread per waiting request: a plain Flask route blocks on the Celery result.
PLAIN_WEB_PROCESSES = 2
PLAIN_WEB_THREADS = max(LEVELS)
PLAIN_WORKER_PROCESSES = 2
SYSTEMS = ("celery", "bentoml", "cortex")
LABELS = {"in_process": "the model in-process", "celery": "Celery without batching (Flask, one task per request)",
          "bentoml": "BentoML, adaptive batching", "cortex": "Cortex (answer cache off)"}


def versions() -> dict[str, str | None]:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {name: version(name) for name in ("celery", "flask", "gunicorn", "bentoml", "sentence-transformers")}


def bentoml_missing() -> str | None:
    """Why the BentoML row cannot run here, or None."""
    if importlib.util.find_spec("bentoml") is None:
        return "bentoml is not installed (pip install -e '.[peers]')"
    return None


def _post(url: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:  # nosec B310 - the bench's own http:// URL
        return response.status


def _wait_ready(probe, what: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            probe()
            return
        except OSError:  # refused, reset, or an HTTP error status (urllib's HTTPError is one)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not answer; see {log}") from None
            time.sleep(0.5)


def _peer_env(env: dict[str, str]) -> dict[str, str]:
    path = os.pathsep.join(part for part in (str(ROOT), env.get("PYTHONPATH", "")) if part)
    return {**env, "PYTHONPATH": path, "PEERS_REDIS_URL": env["REDIS_URL"], "HF_HUB_OFFLINE": "1"}


def plain_celery_commands(port: int, hostname: str) -> tuple[list[str], list[str]]:
    """(gunicorn, celery worker): the plain peer's two processes as a user starts them."""
    from bench._peers_celery import QUEUE

    web = [sys.executable, "-m", "gunicorn", "-w", str(PLAIN_WEB_PROCESSES), "-k", "gthread",
           "--threads", str(PLAIN_WEB_THREADS), "-b", f"127.0.0.1:{port}", "bench._peers_celery:web"]
    worker = [sys.executable, "-m", "celery", "-A", "bench._peers_celery", "worker", "-P", "prefork",
              "-c", str(PLAIN_WORKER_PROCESSES), "-Q", QUEUE, "-n", hostname, "--without-gossip",
              "--without-mingle", "-l", "WARNING"]
    return web, worker


@contextmanager
def plain_celery(env: dict[str, str]) -> Iterator[str]:
    from cortex_tasks.stack.embedded import free_port

    folder = Path(env["folder"])
    port = free_port()
    web, worker = plain_celery_commands(port, f"peers-{port}@localhost")
    peer_env = _peer_env(env)
    with ExitStack() as cleanup:
        started = []
        cleanup.callback(lambda: [_stop(p) for p in reversed(started)])
        started.append(_start(web, folder / "peers-gunicorn.log", peer_env))
        started.append(_start(worker, folder / "peers-celery.log", peer_env))
        url = f"http://127.0.0.1:{port}"
        # A no-op answered means gunicorn serves and the worker consumes; its children load the model
        # when they start, before they take a task.
        _wait_ready(lambda: _post(f"{url}/noop", {}), "the plain Celery peer", 300, folder / "peers-celery.log")
        _wait_ready(lambda: _post(f"{url}/predict", {"inputs": ["warm"]}), "the plain Celery peer's model", 300,
                    folder / "peers-celery.log")
        yield url


def bentoml_command(port: int) -> list[str]:
    executable = Path(sys.executable).with_name("bentoml")
    program = [str(executable)] if executable.exists() else [shutil.which("bentoml") or "bentoml"]
    return [*program, "serve", "bench._peers_bento:Embedder", "--host", "127.0.0.1", "--port", str(port),
            "--working-dir", str(ROOT)]


@contextmanager
def bentoml_service(env: dict[str, str]) -> Iterator[str]:
    from cortex_tasks.stack.embedded import free_port

    folder = Path(env["folder"])
    port = free_port()
    # BENTOML_HOME: its store of bentos and models, kept out of the user's home.
    peer_env = {**_peer_env(env), "BENTOML_HOME": str(folder / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    with ExitStack() as cleanup:
        started = []
        cleanup.callback(lambda: [_stop(p) for p in reversed(started)])
        started.append(_start(bentoml_command(port), folder / "peers-bentoml.log", peer_env))
        url = f"http://127.0.0.1:{port}"
        _wait_ready(lambda: urllib.request.urlopen(f"{url}/readyz", timeout=5).close(),  # nosec B310
                    "bentoml serve", 300, folder / "peers-bentoml.log")
        _wait_ready(lambda: _post(f"{url}/predict", {"inputs": ["warm"]}), "the BentoML peer's model", 300,
                    folder / "peers-bentoml.log")
        yield url


def _level(url: str, key: str, path: str, texts: list[str], clients: int, seconds: float,
           limit: float) -> dict[str, Any]:
    report = run_load(url, key, texts, clients, 1, seconds, path=path)
    rate = report["requests"] / report["seconds"]
    return {"clients": clients, "requests": report["requests"], "errors": report["errors"],
            "error_statuses": report["error_statuses"], "requests_per_second": round(rate, 1),
            "ratio_to_limit": round(rate / limit, 3), **percentiles(report["latencies_ms"]),
            "client_cpu_percent": report["client_cpu_percent_of_one_core"]}


def _in_process(texts: list[str], quick: bool) -> dict[str, Any]:
    model = raw_embedder()
    raw_single_latency(model, corpus(20, tag="warm-peers"))
    singles = texts[:150 if quick else 600]
    started = time.perf_counter()
    single = raw_single_latency(model, singles)
    single_rate = len(singles) / (time.perf_counter() - started)
    limit = raw_limit(model, sample_of(texts, 512 if quick else 4096))
    return {"single_call": {"requests_per_second": round(single_rate, 1), **single}, "limit": limit}


def run(quick: bool) -> dict[str, Any]:
    seconds = 6.0 if quick else 20.0
    per_level = int(MAX_ITEMS_PER_SECOND * seconds)
    # One slice per (system, level) and one for the no-op: no text is sent twice in the whole run.
    texts = corpus(per_level * (len(SYSTEMS) * len(LEVELS) + 1), tag="peers")
    slices = iter(texts[i:i + per_level] for i in range(0, len(texts), per_level))
    results: dict[str, Any] = {"machine": machine(), "seconds_per_level": seconds, "versions": versions()}
    with services() as env:
        baseline = _in_process(texts, quick)
        limit = baseline["limit"]["items_per_second"]
        results["in_process"] = baseline
        key = api_key()
        starters = {"celery": (plain_celery, "/predict"), "bentoml": (bentoml_service, "/predict"),
                    "cortex": (lambda e: gateway_and_worker(e, {"CORTEX_CACHE": "0"}), "/api/v1/predict")}
        for system in SYSTEMS:
            start, path = starters[system]
            level_texts = [next(slices) for _ in LEVELS]
            if system == "bentoml" and (reason := bentoml_missing()):
                results[system] = {"skipped": reason}
                continue
            with start(env) as url:
                run_load(url, key, corpus(512, tag=f"warm-{system}"), 16, 1, 3.0, path=path)
                results[system] = {"levels": [_level(url, key, path, part, clients, seconds, limit)
                                              for clients, part in zip(LEVELS, level_texts)]}
                if system == "celery":
                    noop = run_load(url, key, next(slices), 1, 1, seconds, path="/noop")
                    results["celery_noop"] = {"clients": 1, "requests": noop["requests"],
                                              "errors": noop["errors"], **percentiles(noop["latencies_ms"])}
    results["cortex_vs_peers"] = compare(results)
    print_table(results)
    return results


def compare(results: dict[str, Any]) -> dict[str, Any]:
    """Cortex's rate over each peer's at each level (below 1: Cortex is behind it there), and its
    1-client p50 against the raw single call and the plain Celery round trip with the same model."""
    if "levels" not in results.get("cortex", {}):
        return {}
    cortex = {level["clients"]: level for level in results["cortex"]["levels"]}
    rates = {str(clients): {system: round(cortex[clients]["requests_per_second"]
                                                  / max(level["requests_per_second"], 0.001), 2)
                                    for system in SYSTEMS if system != "cortex" and "levels" in results[system]
                                    for level in results[system]["levels"] if level["clients"] == clients}
             for clients in LEVELS}
    single = cortex[min(LEVELS)]["p50_ms"]
    celery = {level["clients"]: level for level in results.get("celery", {}).get("levels", [])}
    return {"rate_ratio": rates,
            "one_client_p50_above_raw_call_ms": round(single - results["in_process"]["single_call"]["p50_ms"], 2),
            "one_client_p50_minus_plain_celery_ms": (round(single - celery[min(LEVELS)]["p50_ms"], 2)
                                                     if celery else None)}


def _cell(row: dict[str, Any], p99: bool) -> str:
    tail = f" / {row['p99_ms']:.0f}" if p99 else ""
    errors = f" {row['errors']} errors" if row["errors"] else ""
    return f"{row['requests_per_second']:.1f} ({row['p50_ms']:.0f}{tail} ms) {row['ratio_to_limit']:.2f}x{errors}"


def print_table(results: dict[str, Any]) -> None:
    single, limit = results["in_process"]["single_call"], results["in_process"]["limit"]
    print(f"\nmachine {results['machine']}; {results['seconds_per_level']} s per level, one sentence per request")
    print(f"in-process limit: {limit['items_per_second']} items/s ({limit['best']}); every ratio is to it")
    print(f"versions: {results.get('versions')}\n")
    header = ["system", "1 client: req/s (p50) ratio", "16 clients: req/s (p50) ratio",
              "64 clients: req/s (p50 / p99) ratio"]
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---" for _ in header) + " |")
    print(f"| {LABELS['in_process']} | {single['requests_per_second']:.1f} unbatched ({single['p50_ms']:.0f} ms) "
          f"{single['requests_per_second'] / limit['items_per_second']:.2f}x | — | "
          f"{limit['items_per_second']:.1f} ({limit['best']}) 1.00x |")
    for system in SYSTEMS:
        row = results[system]
        if "skipped" in row:
            print(f"| {LABELS[system]} | skipped: {row['skipped']} | | |")
            continue
        cells = [_cell(level, p99=level["clients"] == max(LEVELS)) for level in row["levels"]]
        print(f"| {LABELS[system]} | " + " | ".join(cells) + " |")
    noop = results["celery_noop"]
    print(f"\nplain Celery no-op round trip (Flask + gunicorn + Celery, a task that returns at once), 1 client: "
          f"p50 {noop['p50_ms']} ms, p99 {noop['p99_ms']} ms ({noop['requests']} requests, {noop['errors']} errors)")
    print(f"in-process single call: p50 {single['p50_ms']} ms, p99 {single['p99_ms']} ms")
    versus = results.get("cortex_vs_peers")
    if versus:
        print(f"Cortex, 1 client: p50 {versus['one_client_p50_above_raw_call_ms']} ms above the raw call, "
              f"{versus['one_client_p50_minus_plain_celery_ms']} ms against the plain Celery round trip")
        for level, ratios in versus["rate_ratio"].items():
            shown = ", ".join(f"{ratio}x {system}" for system, ratio in ratios.items())
            print(f"Cortex's req/s at {level} client{'' if level == '1' else 's'}: {shown}")
