"""Cache-hit throughput: the same requests answered from the cache, against the same requests with the
cache off (every one computed by the model), in one run.
Targets: hits >= 1,500 requests/s with p50 < 5 ms."""
from __future__ import annotations

from typing import Any

from bench._harness import api_key, corpus, gateway_and_worker, machine, percentiles, run_load, services

CLIENTS = 8


def _measure(url: str, key: str, texts: list[str], seconds: float) -> dict[str, Any]:
    report = run_load(url, key, texts, CLIENTS, 1, seconds, repeat=True)
    return {"requests_per_second": round(report["requests"] / report["seconds"], 1),
            "requests": report["requests"], "errors": report["errors"], **percentiles(report["latencies_ms"]),
            "client_cpu_percent": report["client_cpu_percent_of_one_core"]}


def run(quick: bool) -> dict[str, Any]:
    seconds = 6.0 if quick else 20.0
    texts = corpus(200, tag="hot")
    key = None
    results: dict[str, Any] = {"machine": machine(), "clients": CLIENTS, "distinct_inputs": len(texts)}
    with services() as env:
        key = api_key()
        with gateway_and_worker(env) as url:
            run_load(url, key, texts, 4, 1, 60.0)  # fill the cache: every text once
            results["hits"] = _measure(url, key, texts, seconds)
        with gateway_and_worker(env, {"CORTEX_CACHE": "0"}) as url:
            results["cache_off"] = _measure(url, key, texts, seconds)
    results["speedup"] = round(results["hits"]["requests_per_second"]
                               / max(results["cache_off"]["requests_per_second"], 0.001), 1)
    print(f"\n{'':<10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'client cpu%':>12}")
    for label in ("hits", "cache_off"):
        row = results[label]
        print(f"{label:<10}{row['requests_per_second']:>10}{row['p50_ms']:>9}{row['p99_ms']:>9}{row['errors']:>8}"
              f"{row['client_cpu_percent']:>12}")
    print(f"speedup from the cache: {results['speedup']}x")
    return results
