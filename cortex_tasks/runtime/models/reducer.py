"""Dimensionality reduction (PCA or UMAP) of the vectors a request submits, or of its texts embedded
with MiniLM first.

Unlike the other backends, the outputs depend on all inputs together: a request's inputs are one
dataset, projected as a whole (the catalogue marks the model `batchable=False`, so requests are never
merged with other requests' items). Inputs are either all strings or all lists of numbers, and every
vector must have the same dimension and finite values.

UMAP (umap-learn) compiles its numba kernels on first use in a process, which takes seconds; later
calls are fast. A fixed random_state makes its output repeatable for the same input.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.runtime.models.base import ModelInfo, device_name
from cortex_tasks.runtime.models.loaded import get_model

METHODS = ("pca", "umap")
METRICS = ("euclidean", "cosine")
MAX_DIMENSION = 8192
MAX_COMPONENTS = 100
MIN_ROWS = {"pca": 2, "umap": 4}
RANDOM_STATE = 42
DECIMALS = 6
EMBEDDER = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class ReduceParams:
    method: str
    n_components: int
    n_neighbors: int | None
    min_dist: float
    metric: str


def vectors_from_inputs(inputs: list[Any]) -> np.ndarray | None:
    """The inputs as an (n, d) float array, or None when they are all texts (to be embedded first)."""
    if not inputs:
        raise JobInputError("invalid_input", "reduce needs at least one input")
    if all(isinstance(item, str) for item in inputs):
        return None
    dimension = None
    for index, item in enumerate(inputs):
        if not isinstance(item, list):
            raise JobInputError("invalid_input", f"inputs[{index}] must be a list of numbers like the others "
                                "(inputs are all texts or all vectors)", {"index": index})
        if dimension is None:
            dimension = len(item)
            if not 1 <= dimension <= MAX_DIMENSION:
                raise JobInputError("invalid_input", f"vectors must have 1 to {MAX_DIMENSION} numbers",
                                    {"index": index})
        elif len(item) != dimension:
            raise JobInputError("ragged_vectors", f"inputs[{index}] has {len(item)} numbers, inputs[0] has "
                                f"{dimension}: all vectors must have the same dimension",
                                {"index": index, "expected": dimension, "got": len(item)})
        for position, value in enumerate(item):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise JobInputError("invalid_input", f"inputs[{index}][{position}] must be a finite number",
                                    {"index": index, "position": position})
    return np.asarray(inputs, dtype=np.float64)


def reduce_params(params: dict[str, Any], rows: int, dimension: int) -> ReduceParams:
    method = params.get("method", "pca")
    if method not in METHODS:
        raise JobInputError("invalid_params", f"params.method must be one of {', '.join(METHODS)}")
    if rows < MIN_ROWS[method]:
        raise JobInputError("too_few_inputs", f"{method} needs at least {MIN_ROWS[method]} inputs, got {rows}")
    n_components = params.get("n_components", 2)
    # PCA cannot have more components than rows or dimensions; UMAP's embedding needs fewer than the
    # rows it lays out.
    limit = min(MAX_COMPONENTS, dimension, rows if method == "pca" else rows - 2)
    if isinstance(n_components, bool) or not isinstance(n_components, int) or not 1 <= n_components <= limit:
        raise JobInputError("invalid_params", f"params.n_components must be an integer from 1 to {limit} "
                            f"for {rows} inputs of dimension {dimension}")
    n_neighbors = params.get("n_neighbors")
    if n_neighbors is not None and (isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int)
                                    or not 2 <= n_neighbors < rows):
        raise JobInputError("invalid_params", f"params.n_neighbors must be an integer from 2 to {rows - 1}")
    min_dist = params.get("min_dist", 0.1)
    if isinstance(min_dist, bool) or not isinstance(min_dist, (int, float)) or not 0.0 <= min_dist <= 1.0:
        raise JobInputError("invalid_params", "params.min_dist must be a number from 0 to 1")
    metric = params.get("metric", "euclidean")
    if metric not in METRICS:
        raise JobInputError("invalid_params", f"params.metric must be one of {', '.join(METRICS)}")
    return ReduceParams(method, n_components, n_neighbors, float(min_dist), metric)


def pca(vectors: np.ndarray, n_components: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    # The full SVD is exact and deterministic (signs are fixed by scikit-learn's svd_flip).
    return PCA(n_components=n_components, svd_solver="full").fit_transform(vectors)


def umap_projection(vectors: np.ndarray, options: ReduceParams) -> np.ndarray:
    import umap

    rows = len(vectors)
    n_neighbors = options.n_neighbors or min(15, rows - 1)
    # Spectral initialisation needs more rows than components + 1; tiny inputs start at random.
    init = "spectral" if rows > options.n_components + 2 else "random"
    with warnings.catch_warnings():
        # "n_jobs value 1 overridden to 1 by setting random_state": intended, for repeatable output;
        # spectral-init fallbacks on tiny graphs are expected too.
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_components=options.n_components, n_neighbors=n_neighbors,
                            min_dist=options.min_dist, metric=options.metric, init=init,
                            random_state=RANDOM_STATE, n_jobs=1)
        return reducer.fit_transform(vectors)


def project(vectors: np.ndarray, options: ReduceParams) -> np.ndarray:
    if options.method == "pca":
        return pca(vectors, options.n_components)
    return umap_projection(vectors, options)


class VectorReducer:
    def __init__(self, name: str, version: str) -> None:
        self.info = ModelInfo(name=name, version=version, task="reduce", device=device_name(),
                              max_input_chars=10_000, max_batch_size=1000)
        self.card = {"methods": list(METHODS), "embedder_for_texts": EMBEDDER, "random_state": RANDOM_STATE}

    def predict(self, inputs: list[Any], params: dict[str, Any]) -> list[list[float]]:
        vectors = vectors_from_inputs(inputs)
        if vectors is None:
            vectors = np.asarray(get_model(EMBEDDER).encode(inputs), dtype=np.float64)  # type: ignore[attr-defined]
        options = reduce_params(params, len(vectors), vectors.shape[1])
        return np.round(project(vectors, options), DECIMALS).tolist()
