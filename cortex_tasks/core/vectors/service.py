"""Vector collections as the gateway and the workers use them: upserts, searches by vector, and the hook
through which an `embed` prediction or batch job with `params.collection` stores its
vectors (`store_embeddings`, called from the worker's inference service). Texts are embedded only by a worker
(`cortex_tasks.runtime.vectors.service`), which passes its embedder to `upsert_items`.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from cortex_tasks.core.catalogue import MODELS
from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.storage.vector_store import (
    Collection,
    CollectionNotFound,
    VectorStore,
    VectorStoreError,
    as_matrix,
)

# Plain data the gateway can import too: the dimension of each embedding model.
EMBEDDING_DIMENSIONS: dict[str, int] = {"all-MiniLM-L6-v2": 384, "efficientnet-lite0": 1280}
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
# The model a collection first written with images is created for (items with "image": staged images).
DEFAULT_IMAGE_MODEL = "efficientnet-lite0"
EMBEDDING_TASKS = ("embed", "image_embed")
MAX_ITEMS = 1000

# (model name, texts or staged images) -> (one unit-length vector each, {"name", "version"} of the model)
Embedder = Callable[[str, list[str]], tuple[np.ndarray, dict[str, str]]]

_store = VectorStore()


def vector_store() -> VectorStore:
    return _store


def create_collection(name: str, dimension: int | None, metric: str, index: dict[str, Any], model: str | None,
                      created_by: str | None, build_index: bool) -> tuple[Collection, bool]:
    """Create a collection for `model`'s embeddings (or for given vectors only, without a model); the same
    configuration again changes nothing, another one is refused by the store. The collection, and whether
    it is new."""
    if model is not None and (model not in MODELS or MODELS[model].task not in EMBEDDING_TASKS):
        raise CortexError("unknown_model", f"{model!r} is not an embedding model.",
                          {"valid": sorted(n for n, m in MODELS.items() if m.task in EMBEDDING_TASKS)}, status=404)
    model_dimension = EMBEDDING_DIMENSIONS.get(model or "")
    dimension = dimension or model_dimension
    if dimension is None:
        raise CortexError("invalid_request", "dimension is required for a collection without a model")
    if model_dimension is not None and dimension != model_dimension:
        raise CortexError("dimension_mismatch", f"{model} makes {model_dimension}-d vectors, not {dimension}")
    store = vector_store()
    try:
        store.get_collection(name)
        existed = True
    except CollectionNotFound:
        existed = False
    collection = store.create_collection(name, dimension, metric, index, model, created_by=created_by,
                                         build_index=build_index, exist_ok=True)
    return collection, not existed


def embedding_model(collection: str, missing_ok: bool = False, images: bool = False) -> str | None:
    """The model that embeds texts for `collection` in this tenant (None: it takes vectors only). With
    `missing_ok`, a collection that does not exist yet answers the model an upsert would create it with;
    else it is a 404, raised before any job is queued. Per-model key limits are checked against this."""
    try:
        return vector_store().get_collection(collection).model
    except CollectionNotFound:
        if missing_ok:
            return DEFAULT_IMAGE_MODEL if images else DEFAULT_EMBEDDING_MODEL
        raise


def input_error(exc: VectorStoreError) -> JobInputError:
    return JobInputError(exc.code, exc.message, {**exc.details, "status": exc.status})


def generated_id(text: Any) -> str:
    """Ids for items that came without one: derived from the text (an image: its bytes' hash), so that a
    redelivered job (delivery is at-least-once) rewrites the same items instead of adding copies."""
    if isinstance(text, dict) and "image_sha256" in text:
        return "i-" + str(text["image_sha256"])[:32]
    return "t-" + hashlib.sha256(str(text).encode()).hexdigest()[:32]


def upsert_items(collection: str, items: list[dict[str, Any]], created_by: str | None = None,
                 embed: Embedder | None = None) -> dict[str, Any]:
    """Upsert `{"id", "text" | "vector", "metadata"?}` items; texts are embedded with the collection's
    model by `embed` (a worker's; items with texts need one). A missing collection is created (cosine,
    default HNSW index) for the model's dimension."""
    started = time.perf_counter()
    store = vector_store()
    # Items to embed: texts, or images (staged by the gateway, core/images/intake.py) for an image model.
    text_positions = [index for index, item in enumerate(items) if item.get("text") is not None]
    image_positions = [index for index, item in enumerate(items) if item.get("image") is not None]
    try:
        try:
            target = store.get_collection(collection)
        except VectorStoreError as exc:
            if exc.code != "collection_not_found":
                raise
            target = None
        model_name = target.model if target is not None else \
            DEFAULT_IMAGE_MODEL if image_positions else DEFAULT_EMBEDDING_MODEL
        if (text_positions or image_positions) and not model_name:
            raise JobInputError("collection_has_no_model",
                                f"collection {collection!r} has no embedding model: send vectors, not texts")
        takes_images = MODELS[model_name].task == "image_embed" if model_name in MODELS else False
        if (image_positions if not takes_images else text_positions):
            wrong = "images" if image_positions and not takes_images else "texts"
            raise JobInputError("wrong_input_kind", f"collection {collection!r} embeds "
                                f"{'images' if takes_images else 'texts'} with {model_name}: it cannot take {wrong}")
        if image_positions:  # from here on, what is embedded is what the model takes
            text_positions = image_positions
        if target is None:
            first_vector = next((item["vector"] for item in items if item.get("vector") is not None), None)
            if image_positions:
                dimension, default_model = EMBEDDING_DIMENSIONS[DEFAULT_IMAGE_MODEL], DEFAULT_IMAGE_MODEL
            else:
                dimension = len(first_vector) if first_vector is not None and not text_positions \
                    else EMBEDDING_DIMENSIONS[DEFAULT_EMBEDDING_MODEL]
                default_model = DEFAULT_EMBEDDING_MODEL if dimension == 384 else None
            target = store.ensure_collection(collection, dimension, model=default_model, created_by=created_by)
        matrix = np.zeros((len(items), target.dimension), dtype=np.float32)
        vector_positions = [index for index in range(len(items)) if index not in set(text_positions)]
        model_info = None
        embed_ms = 0.0
        if text_positions:
            if embed is None:
                raise ValueError("items with texts are embedded by a worker: pass its embedder")
            embed_started = time.perf_counter()
            embedded, model_info = embed(target.model or DEFAULT_EMBEDDING_MODEL,
                                          [items[index].get("text", items[index].get("image"))
                                           for index in text_positions])
            embed_ms = round((time.perf_counter() - embed_started) * 1000, 2)
            if embedded.shape[1] != target.dimension:
                raise JobInputError("dimension_mismatch", f"model {model_info['name']} makes "
                                    f"{embedded.shape[1]}-d vectors; the collection holds {target.dimension}-d")
            matrix[text_positions] = embedded
        if vector_positions:
            matrix[vector_positions] = store_matrix([items[i]["vector"] for i in vector_positions], target.dimension)
        written = store.upsert(collection, [item["id"] for item in items], matrix,
                               [item.get("metadata") for item in items])
    except VectorStoreError as exc:
        raise input_error(exc) from None
    body: dict[str, Any] = {"collection": collection, "upserted": written.count, "embedded": len(text_positions),
                            "timings": {"embed_ms": embed_ms, "write_ms": written.elapsed_ms,
                                        "total_ms": round((time.perf_counter() - started) * 1000, 2)}}
    if model_info is not None:
        body["model"] = model_info
    return body


def store_matrix(vectors: list[Any], dimension: int) -> np.ndarray:
    return as_matrix(vectors, dimension)


def store_embeddings(model_info: dict[str, Any], inputs: list[Any], outputs: list[Any],
                     params: dict[str, Any]) -> dict[str, Any]:
    """Write an embed job's vectors into `params.collection` (created if missing, for this model).

    Ids are `params.ids` (one per input) or derived from each text; `params.metadata` (one object per
    input) is stored with them. Items that failed (an error in place of a vector) are skipped.
    """
    collection = params["collection"]
    ids = params.get("ids")
    metadata = params.get("metadata")
    if ids is not None and (not isinstance(ids, list) or len(ids) != len(inputs)):
        raise JobInputError("invalid_ids", "params.ids must be a list with one id per input")
    if metadata is not None and (not isinstance(metadata, list) or len(metadata) != len(inputs)):
        raise JobInputError("invalid_metadata", "params.metadata must be a list with one object per input")
    keep = [index for index, output in enumerate(outputs) if isinstance(output, list)]
    if not keep:
        return {"name": collection, "upserted": 0, "ids": []}
    item_ids = [ids[i] if ids is not None else generated_id(inputs[i]) for i in keep]
    try:
        matrix = np.asarray([outputs[i] for i in keep], dtype=np.float32)
        target = vector_store().ensure_collection(collection, int(matrix.shape[1]), model=model_info.get("name"))
        if target.model and target.model != model_info.get("name"):
            raise JobInputError("model_mismatch", f"collection {collection!r} holds {target.model} vectors; "
                                f"these come from {model_info.get('name')}")
        written = vector_store().upsert(collection, item_ids, matrix,
                                        [metadata[i] for i in keep] if metadata is not None else None)
    except VectorStoreError as exc:
        raise input_error(exc) from None
    return {"name": collection, "upserted": written.count, "ids": item_ids}
