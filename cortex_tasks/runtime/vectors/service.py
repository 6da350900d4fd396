"""Vector collections where texts must be embedded: in the worker that holds the embedding model.
Vector-only work (upserts of vectors, searches by vector) is `cortex_tasks.core.vectors.service`."""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.registry import stats
from cortex_tasks.core.storage.vector_store import VectorStoreError
from cortex_tasks.core.usage.worker_time import charge_model_call
from cortex_tasks.core.vectors import service as collections
from cortex_tasks.core.vectors.service import input_error, vector_store
from cortex_tasks.runtime.models.loaded import get_model


def embed_texts(model_name: str, texts: list[Any]) -> tuple[np.ndarray, dict[str, str]]:
    """Embed with a catalogue model, counted in that version's serving statistics and charged to the
    running job's model clock (the usage ledger's worker seconds), if it has one."""
    model = get_model(model_name)
    with stats.observe(model.info.name, model.info.version, items=len(texts)):
        encode = getattr(model, "encode", None)
        started = time.perf_counter()
        vectors = encode(texts) if encode is not None else model.predict(texts, {})
        charge_model_call(model.info.name, len(texts), time.perf_counter() - started)
    return np.asarray(vectors, dtype=np.float32), {"name": model.info.name, "version": model.info.version}


def upsert_items(collection: str, items: list[dict[str, Any]], created_by: str | None = None) -> dict[str, Any]:
    """Upsert items that may carry texts, embedded here with the collection's model."""
    return collections.upsert_items(collection, items, created_by, embed=embed_texts)


def search_text(collection: str, text: str | None, k: int = 10, filters: dict[str, Any] | None = None,
                image: dict[str, str] | None = None) -> dict[str, Any]:
    """The k nearest items to a text, or to a staged image in a collection of an image model."""
    store = vector_store()
    try:
        target = store.get_collection(collection)
        if not target.model:
            raise JobInputError("collection_has_no_model",
                                f"collection {collection!r} has no embedding model: search by vector")
        started = time.perf_counter()
        embedded, model_info = embed_texts(target.model, [image if image is not None else text])
        embed_ms = round((time.perf_counter() - started) * 1000, 2)
        result = store.search(collection, embedded[0], k, filters)
    except VectorStoreError as exc:
        raise input_error(exc) from None
    return {"collection": collection, "metric": result.metric, "strategy": result.strategy,
            "model": model_info, "results": [hit.as_dict() for hit in result.hits],
            "timings": {"embed_ms": embed_ms, "search_ms": result.elapsed_ms}}
