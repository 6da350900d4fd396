"""A 10,000-text embed batch job through the whole path against the raw model over the same texts.

The batch path: `POST /api/v1/batch/submit` on a gunicorn gateway (10 batches of 1,000, the API's
maximum), chunks of 100 on the `batch` queue, a threads worker running the same inference service as
/predict, progress counted in PostgreSQL, Arrow results in the object store, a Parquet file at the end.
Measured: items/s from the first submission until the last batch has succeeded, and the time from the
first submission to the first progress (the first chunk counted done).

The baseline, in the same run on the same machine: the raw model (sentence-transformers, batch size 64,
at its best thread layout) embedding the same texts in this process. Target: the batch path at 85% or
more of it. A diagnostic beside it: the same texts through the workers' own encode (groups of similar
length) at that layout, so the table also shows what the path keeps of the model call it makes.
Batch and raw runs alternate (three of each, one with --quick and 2,000 texts) and medians are quoted.

Starts an embedded Redis and PostgreSQL (unless REDIS_URL / DATABASE_URL are set), a gateway and a
worker in a private data folder, and stops them at the end.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench._harness import (
    api_key,
    corpus,
    encode_in_lanes,
    gateway_and_worker,
    layout,
    services,
    thread_layouts,
)

TARGET_RATIO = 0.85
BATCH_SIZE_LIMIT = 1000
@contextmanager
def stack() -> Iterator[dict[str, Any]]:
    """Services, a gateway and a batch worker; yields the gateway's URL and an API key."""
    # The gpu worker's shape (threads, one model copy, torch on every core) on the batch queue only;
    # CORTEX_TORCH_THREADS set by the caller wins.
    threads = os.environ.get("CORTEX_TORCH_THREADS") or str(os.cpu_count() or 1)
    with services() as env:
        key = api_key()
        with gateway_and_worker(env, {"CORTEX_TORCH_THREADS": threads}, web_threads=8, worker_threads=8,
                                queues="batch") as url:
            yield {"url": url, "key": key}


def _call(url: str, key: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method, headers={
        "Authorization": f"Bearer {key}", **({"Content-Type": "application/json"} if data else {})})
    with urllib.request.urlopen(request, timeout=120) as response:  # nosec B310 - operator's gateway URL
        return json.loads(response.read())


def batch_run(url: str, key: str, texts: list[str]) -> dict[str, Any]:
    """Submit `texts` as batches of 1000 at once; wait for all; items/s and time to first progress.

    The client keeps its own load low (it shares the cores with what it measures): it polls only the
    oldest unfinished batch (chunks run roughly in submission order), every 50 ms until the first
    progress and every 250 ms after that, and reports its own CPU time."""
    cpu_started = time.process_time()
    started = time.perf_counter()
    jobs = [_call(url, key, "POST", "/api/v1/batch/submit", {"task": "embed", "inputs": texts[i:i + BATCH_SIZE_LIMIT]}
                  )["job_id"] for i in range(0, len(texts), BATCH_SIZE_LIMIT)]
    submitted = time.perf_counter()
    first_progress, polls = None, 0
    for job_id in jobs:
        while True:
            progress = _call(url, key, "GET", f"/api/v1/batch/progress/{job_id}")
            polls += 1
            if first_progress is None and progress["done"] + progress["failed"] > 0:
                first_progress = time.perf_counter()
            if progress["status"] in ("succeeded", "failed", "cancelled"):
                if progress["status"] != "succeeded" or progress["failed"]:
                    raise RuntimeError(f"batch {job_id} ended {progress['status']} with {progress['failed']} failed items")
                break
            time.sleep(0.05 if first_progress is None else 0.25)
    ended = time.perf_counter()
    return {"items_per_second": round(len(texts) / (ended - started), 1), "seconds": round(ended - started, 2),
            "submit_seconds": round(submitted - started, 2),
            "first_progress_seconds": round((first_progress or ended) - started, 2), "batches": len(jobs),
            "client_cpu_seconds": round(time.process_time() - cpu_started, 2), "client_polls": polls}


def raw_run(model: Any, texts: list[str]) -> dict[str, Any]:
    """The raw model at its best: batch size 64, all texts in one call (sorted by length together), with
    torch on every core, on one (on a shared, busy machine one thread can beat two, because a
    multi-threaded kernel waits for its slowest thread), or one call per core at once with a thread each."""
    import torch

    cores = os.cpu_count() or 1
    seconds = {}
    for label, threads, lanes in thread_layouts():
        torch.set_num_threads(threads)
        seconds[label] = encode_in_lanes(model, texts, -(-len(texts) // lanes), lanes, batch_size=64)
    best = min(seconds, key=seconds.get)
    # Diagnostic: the same layout through the workers' own encode (groups of similar length).
    threads, lanes = layout(best)
    torch.set_num_threads(threads)
    own = encode_in_lanes(model, texts, -(-len(texts) // lanes), lanes, cortex_encode=True)
    torch.set_num_threads(cores)
    return {"items_per_second": round(len(texts) / seconds[best], 1), "seconds": round(seconds[best], 2),
            "best_layout": best,
            "items_per_second_by_layout": {label: round(len(texts) / s, 1) for label, s in seconds.items()},
            "cortex_encode_items_per_second": round(len(texts) / own, 1)}


def _machine() -> dict[str, Any]:
    import torch

    return {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def run(quick: bool) -> dict[str, Any]:
    import torch

    from cortex_tasks.runtime.models.embedding import SentenceEmbedder

    count, rounds = (2_000, 1) if quick else (10_000, 3)
    texts = corpus(count)
    torch.set_num_threads(os.cpu_count() or 1)
    figures: dict[str, Any] = {"texts": count, "rounds": rounds, "chunk_size": 100, "machine": _machine(),
                               "worker_torch_threads": int(os.environ.get("CORTEX_TORCH_THREADS") or os.cpu_count() or 1)}
    with stack() as running:
        model = SentenceEmbedder("all-MiniLM-L6-v2", "1")
        model.encode(texts[:256])  # warm the raw model
        warm = batch_run(running["url"], running["key"], corpus(200, seed=99))  # loads the worker's model
        figures["warm_up_seconds"] = warm["seconds"]
        raw, batch = [], []
        for round_number in range(rounds):
            raw.append(raw_run(model, texts))
            batch.append(batch_run(running["url"], running["key"], texts))
            print(f"round {round_number + 1}: raw {raw[-1]['items_per_second']}/s, "
                  f"batch {batch[-1]['items_per_second']}/s", file=sys.stderr, flush=True)
        del model
    raw_rate = statistics.median(r["items_per_second"] for r in raw)
    own_rate = statistics.median(r["cortex_encode_items_per_second"] for r in raw)
    batch_rate = statistics.median(b["items_per_second"] for b in batch)
    figures.update({
        "raw_items_per_second": raw_rate, "batch_items_per_second": batch_rate,
        "ratio_to_raw": round(batch_rate / raw_rate, 3), "target_ratio": TARGET_RATIO,
        "raw_cortex_encode_items_per_second": own_rate, "ratio_to_cortex_encode": round(batch_rate / own_rate, 3),
        "meets_target": batch_rate / raw_rate >= TARGET_RATIO,
        "first_progress_seconds": statistics.median(b["first_progress_seconds"] for b in batch),
        "raw_runs": raw, "batch_runs": batch,
    })
    print_table(figures)
    return figures


def print_table(f: dict[str, Any]) -> None:
    m = f["machine"]
    print(f"\nbatch job: {f['texts']:,} texts (embed, MiniLM), batches of 1,000 in chunks of {f['chunk_size']}; "
          f"median of {f['rounds']} run(s)")
    print(f"machine: {m['cores']} cores, {m['cpu']}, torch {m['torch']} ({m['torch_threads']} threads)")
    print(f"{'path':<44}{'items/s':>10}{'seconds':>10}")
    print(f"{'raw model in-process (batch 64, best layout)':<44}{f['raw_items_per_second']:>10,.1f}"
          f"{statistics.median(r['seconds'] for r in f['raw_runs']):>10.1f}")
    print(f"{'diagnostic: raw through the workers encode':<44}{f['raw_cortex_encode_items_per_second']:>10,.1f}")
    print(f"{'batch job through the gateway and worker':<44}{f['batch_items_per_second']:>10,.1f}"
          f"{statistics.median(b['seconds'] for b in f['batch_runs']):>10.1f}")
    print(f"ratio to raw: {f['ratio_to_raw']:.1%} (target {f['target_ratio']:.0%}: "
          f"{'met' if f['meets_target'] else 'missed'}); to the diagnostic (what the path keeps): "
          f"{f['ratio_to_cortex_encode']:.1%}; time to first progress: {f['first_progress_seconds']:.2f} s")


if __name__ == "__main__":
    print(json.dumps({"bench": "batch_job", **run("--quick" in sys.argv)}, default=str))
