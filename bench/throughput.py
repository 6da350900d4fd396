"""End-to-end embedding throughput through POST /api/v1/predict against the raw model's limit.

Baseline (same run): all-MiniLM-L6-v2 in-process at its best batch size and thread count.
Figures: items/s at 1, 16 and 64 clients with one sentence per request and at 16 clients with 8 per
request, with batching on and off; the ratio of each to the limit; p50/p99 latency; the load
generator's own CPU use (it shares the machine with the system under test).
Targets: 64x1 >= 70% of the limit, 16x8 >= 85%.
"""
from __future__ import annotations

from typing import Any

from bench._harness import (
    api_key,
    corpus,
    gateway_and_worker,
    machine,
    percentiles,
    raw_embedder,
    raw_limit,
    run_load,
    services,
)

SCENARIOS = ((1, 1), (16, 1), (64, 1), (16, 8))
MODES = (("batching_on", {}), ("batching_off", {"CORTEX_BATCHING": "0"}))
# Above any rate reached here: each scenario gets this many unique texts per second it runs.
MAX_ITEMS_PER_SECOND = 400


def texts_for(seconds: float, items: int) -> int:
    return int(MAX_ITEMS_PER_SECOND * seconds * items)


def sample_of(texts: list[str], count: int) -> list[str]:
    """`count` texts spread evenly over `texts`. The limit is measured on these, so that it runs the very
    kind of text the clients send: a corpus of its own (another tag, a shorter index range) tokenizes
    differently (measured: 19.6 tokens a text against the clients' 20.3), and the model's cost follows
    the tokens. Running them in this process leaves Cortex's caches untouched."""
    return texts[::max(1, len(texts) // count)][:count]


def _scenario(url: str, key: str, texts: list[str], clients: int, items: int, seconds: float,
              limit: float, cortex_encode_limit: float) -> dict[str, Any]:
    report = run_load(url, key, texts, clients, items, seconds)
    items_per_second = report["requests"] * items / report["seconds"]
    return {"clients": clients, "items_per_request": items, "requests": report["requests"],
            "errors": report["errors"], "items_per_second": round(items_per_second, 1),
            "ratio_to_limit": round(items_per_second / limit, 3),
            "ratio_to_cortex_encode": round(items_per_second / cortex_encode_limit, 3),
            **percentiles(report["latencies_ms"]),
            "client_cpu_percent": report["client_cpu_percent_of_one_core"]}


def run(quick: bool) -> dict[str, Any]:
    seconds = 6.0 if quick else 20.0
    # Every request of every scenario carries texts never sent before, so no answer comes from the cache.
    texts = corpus(len(MODES) * sum(texts_for(seconds, items) for _, items in SCENARIOS), tag="t")
    with services() as env:
        model = raw_embedder()
        limit = raw_limit(model, sample_of(texts, 1024 if quick else 4096))
        del model  # the worker holds its own copy; free the cores and memory for the system under test
        key = api_key()
        results: dict[str, Any] = {"machine": machine(), "raw_limit": limit}
        offset = 0
        for label, overrides in MODES:
            rows = []
            with gateway_and_worker(env, overrides) as url:
                run_load(url, key, corpus(512, tag=f"warm-{label}"), 16, 1, 3.0)  # warm-up
                for clients, items in SCENARIOS:
                    if label == "batching_off" and clients == 1:
                        continue  # batching cannot change a single client's figure
                    need = texts_for(seconds, items)
                    rows.append(_scenario(url, key, texts[offset:offset + need], clients, items, seconds,
                                          limit["items_per_second"], limit["cortex_encode_items_per_second"]))
                    offset += need
            results[label] = rows
        print_table(results)
        return results


def print_table(results: dict[str, Any]) -> None:
    limit = results["raw_limit"]
    print(f"\nraw limit: {limit['items_per_second']} items/s ({limit['best']}, sentence-transformers' encode); "
          f"machine {results['machine']}")
    print(f"diagnostic: the same model through the workers' own encode: {limit['cortex_encode_items_per_second']} "
          f"items/s (column 'vs own': end to end against it, i.e. what the path itself keeps)")
    print(f"{'mode':<13}{'clients':>8}{'items':>6}{'items/s':>10}{'ratio':>7}{'vs own':>8}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'errors':>7}{'client cpu%':>12}")
    for mode in ("batching_on", "batching_off"):
        for row in results[mode]:
            print(f"{mode:<13}{row['clients']:>8}{row['items_per_request']:>6}{row['items_per_second']:>10}"
                  f"{row['ratio_to_limit']:>7}{row['ratio_to_cortex_encode']:>8}{row['p50_ms']:>9}{row['p99_ms']:>9}{row['errors']:>7}"
                  f"{row['client_cpu_percent']:>12}")
