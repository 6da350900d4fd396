"""Cache-hit throughput: the same requests answered from the cache, against the same requests with the
cache off (every one computed by the model), in one run; hits at 8 and at 32 clients.
Targets: hits >= 3,000 requests/s with p50 < 3 ms at 8 clients, >= 2,500/s with p50 < 15 ms at 32."""
from __future__ import annotations

from typing import Any

from bench._harness import api_key, corpus, gateway_and_worker, machine, percentiles, run_load, services

CLIENTS = 8
MANY_CLIENTS = 32


def _measure(url: str, key: str, texts: list[str], seconds: float, clients: int = CLIENTS) -> dict[str, Any]:
    report = run_load(url, key, texts, clients, 1, seconds, repeat=True)
    return {"requests_per_second": round(report["requests"] / report["seconds"], 1),
            "requests": report["requests"], "errors": report["errors"], **percentiles(report["latencies_ms"]),
            "client_cpu_percent": report["client_cpu_percent_of_one_core"]}


def run(quick: bool) -> dict[str, Any]:
    seconds = 6.0 if quick else 20.0
    texts = corpus(200, tag="hot")
    key = None
    results: dict[str, Any] = {"machine": machine(), "clients": CLIENTS, "many_clients": MANY_CLIENTS,
                               "distinct_inputs": len(texts)}
    with services() as env:
        key = api_key()
        with gateway_and_worker(env) as url:
            run_load(url, key, texts, 4, 1, 60.0)  # fill the cache: every text once
            results["hits"] = _measure(url, key, texts, seconds)
            results["hits_32_clients"] = _measure(url, key, texts, seconds, MANY_CLIENTS)
        with gateway_and_worker(env, {"CORTEX_CACHE": "0"}) as url:
            results["cache_off"] = _measure(url, key, texts, seconds)
    results["speedup"] = round(results["hits"]["requests_per_second"]
                               / max(results["cache_off"]["requests_per_second"], 0.001), 1)
    print(f"\n{'':<16}{'clients':>8}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'client cpu%':>12}")
    for label, clients in (("hits", CLIENTS), ("hits_32_clients", MANY_CLIENTS), ("cache_off", CLIENTS)):
        row = results[label]
        print(f"{label:<16}{clients:>8}{row['requests_per_second']:>10}{row['p50_ms']:>9}{row['p99_ms']:>9}"
              f"{row['errors']:>8}{row['client_cpu_percent']:>12}")
    print(f"speedup from the cache: {results['speedup']}x")
    return results
