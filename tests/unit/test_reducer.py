"""Reduce input validation and projections (models/reducer.py) on vectors, without MiniLM."""
from __future__ import annotations

import numpy as np
import pytest

from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.runtime.models.reducer import VectorReducer, reduce_params, vectors_from_inputs


def test_texts_are_left_for_the_embedder_and_vectors_become_an_array():
    assert vectors_from_inputs(["a", "b"]) is None
    array = vectors_from_inputs([[1, 2.5], [3, 4]])
    assert array.shape == (2, 2) and array.dtype == np.float64


@pytest.mark.parametrize(("inputs", "code"), [
    ([[1, 2], [1]], "ragged_vectors"),
    ([[1, float("nan")], [1, 2]], "invalid_input"),
    ([[1, float("inf")], [1, 2]], "invalid_input"),
    ([[True, 1], [1, 2]], "invalid_input"),
    ([[1, "2"], [1, 2]], "invalid_input"),
    ([[1, 2], "text"], "invalid_input"),
    (["text", [1, 2]], "invalid_input"),
    ([[]], "invalid_input"),
    ([], "invalid_input"),
])
def test_bad_vectors_are_client_errors(inputs, code):
    with pytest.raises(JobInputError) as raised:
        vectors_from_inputs(inputs)
    assert raised.value.code == code


@pytest.mark.parametrize(("params", "rows", "dimension"), [
    ({"method": "tsne"}, 10, 5),
    ({"n_components": 6}, 10, 5),
    ({"n_components": 0}, 10, 5),
    ({"n_components": 2.0}, 10, 5),
    ({"method": "umap", "n_components": 9}, 10, 50),
    ({"method": "umap", "n_neighbors": 10}, 10, 5),
    ({"method": "umap", "min_dist": 2}, 10, 5),
    ({"metric": "manhattan"}, 10, 5),
])
def test_bad_params_are_client_errors(params, rows, dimension):
    with pytest.raises(JobInputError) as raised:
        reduce_params(params, rows, dimension)
    assert raised.value.code == "invalid_params"


def test_too_few_rows_for_the_method():
    with pytest.raises(JobInputError) as raised:
        reduce_params({"method": "umap"}, 3, 5)
    assert raised.value.code == "too_few_inputs"
    with pytest.raises(JobInputError):
        reduce_params({}, 1, 5)


def test_pca_projects_onto_the_main_axes_deterministically():
    rng = np.random.default_rng(0)
    # Variance mostly along the first axis, some along the second, little elsewhere.
    vectors = rng.normal(size=(20, 6)) * np.array([10, 3, 0.1, 0.1, 0.1, 0.1])
    reducer = VectorReducer("vector-reducer", "1")
    projected = np.array(reducer.predict(vectors.tolist(), {"n_components": 2}))
    assert projected.shape == (20, 2)
    assert projected[:, 0].var() > projected[:, 1].var() > 0
    np.testing.assert_allclose(abs(np.corrcoef(projected[:, 0], vectors[:, 0])[0, 1]), 1.0, atol=0.01)
    assert reducer.predict(vectors.tolist(), {"n_components": 2}) == projected.tolist()
