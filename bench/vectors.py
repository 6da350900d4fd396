"""Vector search on PostgreSQL + pgvector through Cortex's vector store, against exact search.

100,000 structured 384-d vectors (20,000 with --quick): insert rate through the store's bulk paths
(binary COPY straight in; binary COPY + merge for upserts), index build time, and recall@10 with p50/p95
latency of single-client searches for HNSW and IVFFlat at their configured settings (plus a sweep of the
search effort), all against exact search (a sequential scan) in the same run.

The data: real embeddings are far from uniform (they have a low intrinsic dimension and cluster by topic),
and uniformly random 384-d vectors have no meaningful nearest neighbours, which makes every approximate
index look broken. So the vectors are a 1,000-component Gaussian mixture in a 64-d latent space, projected
to 384-d with a little isotropic noise, L2-normalised (seeded, deterministic). Ground truth is brute force
in numpy.

Starts an embedded PostgreSQL 16 + pgvector (shared_buffers 512MB; everything else as `cortex up` runs it)
unless DATABASE_URL is set, and stops it at the end.
"""
from __future__ import annotations

import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

DIMENSION = 384
K = 10
TARGET_HNSW_RECALL = 0.95
TARGET_HNSW_P95_MS = 10.0
TARGET_INSERT_PER_SECOND = 20_000


def structured_vectors(count: int, dimension: int = DIMENSION, clusters: int = 1000, latent: int = 64,
                       seed: int = 42) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, latent)).astype(np.float32)
    points = centers[rng.integers(0, clusters, count)] + rng.normal(size=(count, latent)).astype(np.float32)
    projection = rng.normal(size=(latent, dimension)).astype(np.float32) / math.sqrt(latent)
    vectors = points @ projection + 0.05 * rng.normal(size=(count, dimension)).astype(np.float32)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def exact_neighbours(base: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    similarities = queries @ base.T  # cosine: the vectors are normalised
    top = np.argpartition(-similarities, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(similarities, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


@contextmanager
def database() -> Iterator[tuple[str, str]]:
    """(database URL, where it came from): DATABASE_URL, or an embedded server started here."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"], "DATABASE_URL"
        return
    from cortex_tasks.stack.embedded import EmbeddedPostgres, free_port

    folder = tempfile.mkdtemp(prefix="cortex-bench-")
    server = EmbeddedPostgres(Path(folder) / "postgres", free_port())
    argv = server.argv() + ["-c", "shared_buffers=512MB"]
    with open(os.path.join(folder, "postgres.log"), "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   user=server.system_user)
    try:
        server.wait_ready()
        yield server.url, "embedded PostgreSQL (started by the benchmark)"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # fast shutdown
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


def _percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3)


def _one_pass(store: Any, name: str, queries: np.ndarray, truth: np.ndarray | None, effort: int | None,
              exact: bool) -> dict[str, Any]:
    latencies, recalls = [], []
    for index, query in enumerate(queries):
        started = time.perf_counter()
        hits = store.search(name, query, K, effort=effort, exact=exact).hits
        latencies.append((time.perf_counter() - started) * 1000)
        if truth is not None:
            recalls.append(len({int(hit.id[4:]) for hit in hits} & set(truth[index].tolist())) / K)
    figures: dict[str, Any] = {"queries": len(queries), "p50_ms": _percentile(latencies, 50),
                               "p95_ms": _percentile(latencies, 95)}
    if truth is not None:
        figures["recall_at_10"] = round(float(np.mean(recalls)), 4)
    return figures


def measure_searches(store: Any, name: str, queries: np.ndarray, truth: np.ndarray | None, *,
                     effort: int | None = None, exact: bool = False, warmup: int = 10,
                     first_pass: bool = False) -> dict[str, Any]:
    """Single-client latency through the store (collection lookup, search settings, the query).
    With `first_pass`, a whole timed pass over the queries runs first, with the index's pages still cold
    from the build, and is reported beside the measured (warm) pass."""
    cold = _one_pass(store, name, queries, truth, effort, exact) if first_pass else None
    for query in queries[:warmup]:
        store.search(name, query, K, effort=effort, exact=exact)
    figures = _one_pass(store, name, queries, truth, effort, exact)
    if cold is not None:
        figures["first_pass"] = {key: cold[key] for key in ("p50_ms", "p95_ms")}
    return figures


def _timed(function, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def _machine() -> dict[str, Any]:
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def run(quick: bool) -> dict[str, Any]:
    from sqlalchemy import create_engine, text

    from cortex_tasks.core.storage.db import sqlalchemy_url
    from cortex_tasks.core.storage.migrate import upgrade_to_head
    from cortex_tasks.core.storage.vector_store import HnswIndex, IvfflatIndex, VectorStore

    count, query_count, exact_count = (20_000, 100, 30) if quick else (100_000, 300, 60)
    hnsw_sweep, ivf_sweep = ((40, 100), (20,)) if quick else ((40, 100, 200), (20, 40))
    machine = _machine()
    data, generate_seconds = _timed(structured_vectors, count + query_count)
    base, queries = data[:count], data[count:]
    truth = exact_neighbours(base, queries)
    ids = [f"doc-{i}" for i in range(count)]
    metadata = [{"shard": i % 16} for i in range(count)]
    hnsw, ivfflat = HnswIndex(), IvfflatIndex()  # the store's defaults
    suffix = uuid.uuid4().hex[:8]
    hnsw_name, ivf_name = f"bench-hnsw-{suffix}", f"bench-ivfflat-{suffix}"
    figures: dict[str, Any] = {"vectors": count, "dimension": DIMENSION, "queries": query_count, "k": K,
                               "machine": machine, "data_seconds": round(generate_seconds, 1)}

    with database() as (url, source):
        upgrade_to_head(url)
        engine = create_engine(sqlalchemy_url(url), pool_size=2)
        store = VectorStore(engine)
        try:
            with engine.connect() as conn:
                figures["postgres"] = conn.execute(text("SHOW server_version")).scalar()
                figures["pgvector"] = conn.execute(
                    text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar()
            figures["database"] = source
            store.create_collection(hnsw_name, DIMENSION, index=hnsw, build_index=False)
            store.create_collection(ivf_name, DIMENSION, index=ivfflat, build_index=False)

            # Bulk paths, in loader-sized batches: COPY straight in (new ids), and COPY + merge (upsert).
            batch = 10_000
            _, insert_seconds = _timed(lambda: [store.insert(hnsw_name, ids[i:i + batch], base[i:i + batch],
                                                             metadata[i:i + batch]) for i in range(0, count, batch)])
            _, upsert_seconds = _timed(lambda: [store.upsert(ivf_name, ids[i:i + batch], base[i:i + batch],
                                                             metadata[i:i + batch]) for i in range(0, count, batch)])
            figures["insert_per_second"] = round(count / insert_seconds)
            figures["upsert_per_second"] = round(count / upsert_seconds)

            figures["hnsw"] = {"m": hnsw.m, "ef_construction": hnsw.ef_construction, "ef_search": hnsw.ef_search,
                               "build_seconds": round(store.build_index(hnsw_name), 2)}
            figures["ivfflat"] = {"lists": ivfflat.lists, "probes": ivfflat.probes,
                                  "build_seconds": round(store.build_index(ivf_name), 2)}
            figures["index_bytes"] = {"hnsw": store.describe(hnsw_name)["index_bytes"],
                                      "ivfflat": store.describe(ivf_name)["index_bytes"]}

            exact = measure_searches(store, hnsw_name, queries[:exact_count], truth[:exact_count], exact=True,
                                     warmup=3)
            figures["exact"] = exact
            figures["hnsw"].update(measure_searches(store, hnsw_name, queries, truth, first_pass=True))
            figures["hnsw"]["sweep"] = {str(ef): measure_searches(store, hnsw_name, queries, truth, effort=ef,
                                                                  warmup=3) for ef in hnsw_sweep}
            figures["ivfflat"].update(measure_searches(store, ivf_name, queries, truth, first_pass=True))
            figures["ivfflat"]["sweep"] = {str(p): measure_searches(store, ivf_name, queries, truth, effort=p,
                                                                    warmup=3) for p in ivf_sweep}
            for kind in ("hnsw", "ivfflat"):
                figures[kind]["speedup_vs_exact_p50"] = round(exact["p50_ms"] / figures[kind]["p50_ms"], 1)
        finally:
            for name in (hnsw_name, ivf_name):
                try:
                    store.drop_collection(name)
                except Exception as exc:  # noqa: BLE001 (clean-up must not hide the benchmark's own error)
                    print(f"could not drop {name}: {exc}", file=sys.stderr)
            engine.dispose()

    figures["targets"] = {
        "hnsw_recall_at_10>=0.95": figures["hnsw"]["recall_at_10"] >= TARGET_HNSW_RECALL,
        "hnsw_p95_ms<=10": figures["hnsw"]["p95_ms"] <= TARGET_HNSW_P95_MS,
        "insert_per_second>=20000": figures["insert_per_second"] >= TARGET_INSERT_PER_SECOND,
    }
    print_table(figures)
    return figures


def print_table(f: dict[str, Any]) -> None:
    m = f["machine"]
    print(f"\nvector search: {f['vectors']:,} x {f['dimension']}-d structured vectors, {f['queries']} queries, "
          f"k={f['k']}, cosine")
    print(f"machine: {m['cores']} cores, {m['cpu']}; PostgreSQL {f['postgres']}, pgvector {f['pgvector']} "
          f"({f['database']}); load at start {m['load_average_at_start']}")
    print(f"bulk insert (binary COPY):          {f['insert_per_second']:>10,} vectors/s")
    print(f"bulk upsert (binary COPY + merge):  {f['upsert_per_second']:>10,} vectors/s")
    print(f"\n{'search':<34}{'build s':>9}{'recall@10':>11}{'p50 ms':>9}{'p95 ms':>9}{'x exact':>9}")
    exact = f["exact"]
    print(f"{'exact (sequential scan)':<34}{'-':>9}{exact['recall_at_10']:>11.3f}{exact['p50_ms']:>9.2f}"
          f"{exact['p95_ms']:>9.2f}{1.0:>9.1f}")
    for kind, label, effort in (("hnsw", "HNSW m={m} efc={ef_construction}", "ef_search"),
                                ("ivfflat", "IVFFlat lists={lists}", "probes")):
        entry = f[kind]
        title = label.format(**entry)
        print(f"{title + f' {effort}={entry[effort]}':<34}{entry['build_seconds']:>9.1f}{entry['recall_at_10']:>11.3f}"
              f"{entry['p50_ms']:>9.2f}{entry['p95_ms']:>9.2f}{entry['speedup_vs_exact_p50']:>9.1f}")
        cold = entry["first_pass"]
        print(f"{'  (first pass, cold pages)':<34}{'':>9}{'':>11}{cold['p50_ms']:>9.2f}{cold['p95_ms']:>9.2f}")
        for value, sweep in entry["sweep"].items():
            print(f"{'  ' + effort + '=' + value:<34}{'':>9}{sweep['recall_at_10']:>11.3f}{sweep['p50_ms']:>9.2f}"
                  f"{sweep['p95_ms']:>9.2f}{exact['p50_ms'] / sweep['p50_ms']:>9.1f}")
    targets = ", ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in f["targets"].items())
    print(f"\ntargets: {targets}")
