"""The document passages' place in the vector store, without a database: reserved collection names,
Haystack filters as the store takes them, and what a listing shows of a passage's metadata."""
from __future__ import annotations

import pytest

from cortex_tasks.core.documents import catalog
from cortex_tasks.core.storage.vector_store import (
    VectorStore,
    VectorStoreError,
    any_of_documents,
    encode_metadata,
)


def test_reserved_names_reach_only_their_owners_store():
    name = catalog.passage_collection("library-" + "x" * 56)  # the longest document collection name
    passages = VectorStore(owner=catalog.OWNER)
    assert passages.check_name(name) == name and passages.check_name("plain.name") == "plain.name"
    for store in (VectorStore(), VectorStore(owner="chat")):  # the /vectors API's store has no owner
        with pytest.raises(VectorStoreError) as caught:
            store.check_name(name)
        assert caught.value.code == "invalid_collection_name"
    for bad in ("documents:", "Documents:x", "documents:-x", "documents:a:b", "documents:x y"):
        with pytest.raises(VectorStoreError):
            passages.check_name(bad)
    with pytest.raises(ValueError):
        VectorStore(owner="not an owner")


def test_any_of_choices_are_checked_like_filters():
    assert [len(options) for options in any_of_documents({"topic": ["a", "b"], "year": [1921]})] == [2, 1]
    for bad in ({"topic": []}, {"topic": "a"}, {"topic": [{"nested": 1}]}, {"topic": [float("nan")]}):
        with pytest.raises(VectorStoreError) as caught:
            any_of_documents(bad)
        assert caught.value.code == "invalid_filter"


def test_the_metadata_limit_is_the_stores_own():
    big = [{"text": "x" * 20_000}]
    with pytest.raises(VectorStoreError):
        encode_metadata(big, 1)  # the /vectors limit
    assert len(encode_metadata(big, 1, catalog.MAX_PASSAGE_BYTES)[0]) > 20_000


def test_user_meta_leaves_out_bookkeeping_and_the_text():
    meta = {"collection": "c", "document_id": "d", "passage_index": 0, catalog.CONTENT_KEY: "text",
            "indexed_at": "2026-01-01", "topic": "geology"}
    assert catalog.user_meta(meta) == {"topic": "geology"}


def test_haystack_filters_become_equality_and_any_of():
    pytest.importorskip("haystack")
    from haystack.errors import FilterError

    from cortex_tasks.runtime.documents.service import haystack_filters
    from cortex_tasks.runtime.documents.store import Scope, scope

    assert scope(haystack_filters("library", {"source": "atlas", "topic": ["sports", "geology"], "year": 1921})) \
        == Scope(["library"], {"source": "atlas", "year": 1921}, {"topic": ["sports", "geology"]})
    assert scope(None) == Scope()
    assert scope({"field": "meta.collection", "operator": "in", "value": ["a", "b"]}).collections == ["a", "b"]
    assert scope({"field": "meta.topic", "operator": "in", "value": []}).empty
    for unsupported in (
        {"operator": "OR", "conditions": [{"field": "meta.a", "operator": "==", "value": 1}]},
        {"field": "meta.passage_index", "operator": ">=", "value": 3},
        {"field": "content", "operator": "==", "value": "x"},
        {"operator": "AND", "conditions": [{"field": "meta.a", "operator": "==", "value": 1},
                                           {"field": "meta.a", "operator": "==", "value": 2}]},
        {"operator": "AND", "conditions": [{"operator": "AND", "conditions": []}]},
    ):
        with pytest.raises(FilterError):
            scope(unsupported)
