"""Single-client latency: one sentence per request through POST /api/v1/predict, against a raw
single-sentence model call in-process in the same run. Overhead = p50 difference in ms.
Target: at most 3 ms above the raw call, and below a plain Celery round trip with the same model measured
in the same run (bench/_peers_celery.py, as `bench peers` starts it: a Flask route that sends one task per
request to a prefork worker holding the model and waits for its result).

A diagnostic beside it: the raw call again with the model idling between calls as long as it idles
between one client's requests end to end. On a shared 2-core VM a call after ~15 ms idle is several ms
slower than one in a tight loop (caches and cores go cold; seen with one torch thread as well as two),
and that part of the overhead is the model's, not the path's.

The cold path too: the first two `language` answers once an nlp worker started as `cortex up` starts it is
announced ready (no request may pay for a model load), and the resident memory of every process."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench._harness import (
    api_key,
    corpus,
    gateway_and_worker,
    machine,
    percentiles,
    raw_embedder,
    raw_single_latency,
    resident_memory_mb,
    run_load,
    services,
)
from bench.peers import plain_celery


def run(quick: bool) -> dict[str, Any]:
    count = 150 if quick else 600
    # The raw calls run the very texts the client sends (in this process: Cortex's caches never see them),
    # so that both sides pay for the same tokens.
    texts = corpus(count, tag="e2e")
    with services() as env:
        model = raw_embedder()
        raw_single_latency(model, corpus(20, tag="warm"))
        raw = raw_single_latency(model, texts)
        del model
        key = api_key()
        with gateway_and_worker(env) as url:
            run_load(url, key, corpus(50, tag="warm-e2e"), 1, 1, 30.0)
            report = run_load(url, key, texts, 1, 1, 120.0)
            memory = resident_memory_mb(url)
        with plain_celery(env) as url:
            run_load(url, key, corpus(50, tag="warm-celery"), 1, 1, 30.0, path="/predict")
            # Texts of their own, as long as Cortex's: neither side's cache may have seen them.
            celery = percentiles(run_load(url, key, corpus(count, tag="plain"), 1, 1, 120.0,
                                          path="/predict")["latencies_ms"])
        cold = _first_answers_after_ready(env, key)
    end_to_end = percentiles(report["latencies_ms"])
    idle_ms = max(0.0, end_to_end["p50_ms"] - raw["p50_ms"])
    model = raw_embedder()
    raw_single_latency(model, corpus(20, tag="warm"))
    paced = raw_single_latency(model, texts[:count // 2], idle_seconds=idle_ms / 1000)
    results = {"machine": machine(), "raw_single": raw, "end_to_end": end_to_end,
               "raw_single_paced": {**paced, "idle_ms": round(idle_ms, 2)},
               "overhead_vs_paced_p50_ms": round(end_to_end["p50_ms"] - paced["p50_ms"], 2),
               "requests": report["requests"], "errors": report["errors"], "resident_memory_mb": memory,
               "cold_start": cold,
               "plain_celery": celery,
               "minus_plain_celery_p50_ms": round(end_to_end["p50_ms"] - celery["p50_ms"], 2),
               "overhead_p50_ms": round(end_to_end["p50_ms"] - raw["p50_ms"], 2),
               "overhead_p99_ms": round(end_to_end["p99_ms"] - raw["p99_ms"], 2)}
    print(f"\nraw single-sentence call: p50 {raw['p50_ms']} ms, p99 {raw['p99_ms']} ms")
    print(f"end to end, one client:   p50 {end_to_end['p50_ms']} ms, p99 {end_to_end['p99_ms']} ms "
          f"({report['requests']} requests)")
    print(f"overhead: p50 {results['overhead_p50_ms']} ms, p99 {results['overhead_p99_ms']} ms")
    print(f"plain Celery round trip, same model: p50 {celery['p50_ms']} ms, p99 {celery['p99_ms']} ms; "
          f"Cortex is {results['minus_plain_celery_p50_ms']} ms from it at p50 (below 0: faster)")
    print(f"resident memory (MB): gateway {memory['gateway']}, worker {memory['worker']}")
    print(f"first answers once the nlp worker is ready: language {cold['first_language_ms']} ms, then "
          f"{cold['second_language_ms']} ms (the other pool process); its processes' resident memory (MB): "
          f"{cold['resident_memory_mb']['worker']}")
    print(f"raw call after {results['raw_single_paced']['idle_ms']} ms idle (diagnostic): "
          f"p50 {paced['p50_ms']} ms; end to end is {results['overhead_vs_paced_p50_ms']} ms above it")
    return results


def _first_answers_after_ready(env: dict[str, str], key: str) -> dict[str, Any]:
    """The cold path: the nlp worker as `cortex up` starts it (two prefork pool processes), and the first two
    `language` requests once it is announced ready. Each pool process loads its models before it is counted
    ready, so neither request may pay for a load (seconds) on top of its model call (milliseconds)."""
    timings = []
    with gateway_and_worker(env, profile="nlp") as url:
        # Two at once, so that both pool processes answer one.
        with ThreadPoolExecutor(2) as pool:
            timings = sorted(pool.map(lambda text: _timed_predict(url, key, "language", text),
                                      ["Ceci est une phrase en français.", "Dies ist ein deutscher Satz."]))
        memory = resident_memory_mb(url)
    return {"first_language_ms": timings[0], "second_language_ms": timings[1], "resident_memory_mb": memory}


def _timed_predict(url: str, key: str, task: str, text: str) -> float:
    request = urllib.request.Request(f"{url}/api/v1/predict", method="POST",
                                     data=json.dumps({"task": task, "inputs": [text], "wait": 30}).encode(),
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=90) as response:  # nosec B310 - the bench's own http:// URL
            response.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{task} answered {exc.code}: {exc.read()[:500]!r}") from None
    return round((time.perf_counter() - started) * 1000, 1)
