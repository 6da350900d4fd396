"""A collection's embedding model and dimension are checked before the store is asked for anything."""
from __future__ import annotations

import pytest

from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.vectors import service


@pytest.mark.parametrize(("dimension", "model", "status", "code"), [
    (None, "topic-classifier", 404, "unknown_model"),  # a model, but not an embedding model
    (None, "no-such-model", 404, "unknown_model"),
    (None, None, 422, "invalid_request"),
    (8, service.DEFAULT_EMBEDDING_MODEL, 422, "dimension_mismatch"),
])
def test_a_collection_the_model_cannot_fill_is_refused(dimension, model, status, code, monkeypatch):
    def no_store():
        raise AssertionError("the store was reached before the request was checked")

    monkeypatch.setattr(service, "vector_store", no_store)
    with pytest.raises(CortexError) as caught:
        service.create_collection("c", dimension, "cosine", {}, model, created_by="k", build_index=True)
    assert (caught.value.status, caught.value.code) == (status, code)
