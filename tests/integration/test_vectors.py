"""Vector collections on real PostgreSQL + pgvector: the store itself (round trips, validation, filters,
metrics, index use, recall against exact search on structured data), then the HTTP API with a real
worker embedding texts, and embed jobs writing into a collection."""
from __future__ import annotations

import contextvars
import json
import math
import threading
import time
import uuid

import numpy as np
import pytest
from psycopg import sql

from cortex_tasks import app as celery_app
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.jobs import store as jobs
from cortex_tasks.core.storage import arrow_io
from cortex_tasks.core.storage.vector_store import CollectionConflict, VectorStore, VectorStoreError
from tests.support.waiting import wait_for

# Calls this module makes to the stores directly act for the default tenant, as the suite's keys do.
pytestmark = pytest.mark.usefixtures("in_default_tenant")


@pytest.fixture(scope="module")
def store() -> VectorStore:
    return VectorStore()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def clustered(n: int, dimension: int, clusters: int, seed: int, latent: int = 24) -> np.ndarray:
    """Structured data like real embeddings: a Gaussian mixture on a low-dimensional latent space,
    projected up, with a little isotropic noise, L2-normalised. (Uniform random vectors in high
    dimension have no meaningful neighbours and make every approximate index look broken.)"""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, latent)) * 2.0
    latent_points = centers[rng.integers(0, clusters, n)] + rng.normal(size=(n, latent))
    projection = rng.normal(size=(latent, dimension)) / math.sqrt(latent)
    points = latent_points @ projection + 0.05 * rng.normal(size=(n, dimension))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


# --- the store ---------------------------------------------------------------------------------------


def test_collection_lifecycle(store):
    name = unique("life")
    created = store.create_collection(name, 8, metric="l2", index={"type": "ivfflat", "lists": 4, "probes": 2},
                                      model=None, created_by="tester")
    assert (created.dimension, created.metric, created.index.as_dict()["type"]) == (8, "l2", "ivfflat")
    assert created.index_state == "ready"
    # Same configuration again: the existing collection; another configuration: a conflict.
    assert store.create_collection(name, 8, metric="l2", index={"type": "ivfflat", "lists": 4, "probes": 2},
                                   exist_ok=True).id == created.id
    with pytest.raises(CollectionConflict):
        store.create_collection(name, 16, exist_ok=True)
    assert name in [item.name for item in store.list_collections()]
    described = store.describe(name)
    assert described["count"] == 0 and described["index"]["type"] == "ivfflat"
    assert store.drop_collection(name) is True
    assert store.drop_collection(name) is False
    with pytest.raises(VectorStoreError) as caught:
        store.count(name)
    assert caught.value.status == 404


def test_a_drop_waits_for_the_operations_on_its_table_and_later_ones_find_no_collection(store):
    name = unique("dropped")
    store.create_collection(name, 4)
    store.upsert(name, ["a"], [[1, 0, 0, 0]])
    dropped = threading.Event()
    drop = contextvars.copy_context().run  # the drop acts for this test's tenant too
    with store.connection() as conn:
        collection = store._find(conn, name)  # an operation under way on the collection
        dropping = threading.Thread(target=lambda: drop(lambda: (store.drop_collection(name), dropped.set())))
        dropping.start()
        assert not dropped.wait(1.0)  # the drop waits for it
        count = sql.SQL("SELECT count(*) FROM {}").format(collection.table)
        assert conn.execute(count).fetchone()[0] == 1  # its table is still there
    dropping.join(30)
    assert dropped.is_set()
    with pytest.raises(VectorStoreError) as caught:
        store.count(name)
    assert caught.value.status == 404


def test_names_and_index_settings_are_validated(store):
    for bad in ["x; DROP TABLE jobs", "", "a" * 65, "../x", "space name", 'quo"te']:
        with pytest.raises(VectorStoreError) as caught:
            store.create_collection(bad, 8)
        assert caught.value.code == "invalid_collection_name"
    for dimension, index in [(0, None), (2001, None), (8, {"type": "flat"}), (8, {"type": "hnsw", "m": 1}),
                             (8, {"type": "hnsw", "m": 16, "ef_construction": 8}),
                             (8, {"type": "ivfflat", "lists": 10, "probes": 11}), (8, {"type": "hnsw", "lists": 3})]:
        with pytest.raises(VectorStoreError):
            store.create_collection(unique("bad"), dimension, index=index)
    with pytest.raises(VectorStoreError) as caught:
        store.create_collection(unique("bad"), 8, metric="manhattan")
    assert caught.value.code == "invalid_metric"


def test_upsert_round_trip_is_exact_and_replaces_by_id(store):
    name = unique("round")
    store.create_collection(name, 5)
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(50, 5)).astype(np.float32)
    ids = [f"doc-{i}" for i in range(50)]
    written = store.upsert(name, ids, vectors, [{"n": i, "tag": "even" if i % 2 == 0 else "odd"} for i in range(50)])
    assert written.count == 50 and store.count(name) == 50
    items = store.get(name, ["doc-7", "missing", "doc-3"], include_vectors=True)
    assert [item.id for item in items] == ["doc-7", "doc-3"]
    assert np.array_equal(np.asarray(items[0].vector, dtype=np.float32), vectors[7])  # binary float4: bit-exact
    assert items[0].metadata == {"n": 7, "tag": "odd"}
    store.upsert(name, ["doc-7", "new", "new"], [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0]],
                 [{"v": 2}, {"v": "first"}, {"v": "last"}])
    assert store.count(name) == 51
    replaced, new = store.get(name, ["doc-7", "new"], include_vectors=True)
    assert replaced.vector == [1, 0, 0, 0, 0] and replaced.metadata == {"v": 2}
    assert new.vector == [0, 0, 1, 0, 0] and new.metadata == {"v": "last"}  # last occurrence wins
    with pytest.raises(CollectionConflict) as caught:
        store.insert(name, ["doc-1"], [[0, 0, 0, 0, 1]])  # the bulk-load path refuses existing ids
    assert caught.value.code == "duplicate_id"
    assert store.delete(name, ["doc-1", "doc-2", "nope"]) == 2
    assert store.count(name) == 49


def test_vectors_are_checked_before_insert(store):
    name = unique("checks")
    store.create_collection(name, 3)
    cases = [
        (["a"], [[1, 2]], "dimension_mismatch"),
        (["a"], [[1, 2, float("nan")]], "invalid_vector"),
        (["a"], [[1, float("inf"), 2]], "invalid_vector"),
        (["a"], [[1e300, 0, 0]], "invalid_vector"),  # overflows float32
        (["a"], [["x", 1, 2]], "invalid_vector"),
        (["a", "b"], [[1, 2, 3]], "invalid_vector"),
        ([""], [[1, 2, 3]], "invalid_id"),
        (["a\x00b"], [[1, 2, 3]], "invalid_id"),
        ([7], [[1, 2, 3]], "invalid_id"),
    ]
    for ids, vectors, code in cases:
        with pytest.raises(VectorStoreError) as caught:
            store.upsert(name, ids, vectors)
        assert caught.value.code == code, (ids, vectors)
    with pytest.raises(VectorStoreError) as caught:
        store.upsert(name, ["a"], [[1, 2, 3]], [{"big": "x" * 20_000}])
    assert caught.value.code == "invalid_metadata"
    with pytest.raises(VectorStoreError):
        store.upsert(name, ["a"], [[1, 2, 3]], [{"nan": float("nan")}])
    assert store.count(name) == 0  # nothing half-written


def test_metadata_equality_filters(store):
    name = unique("filters")
    store.create_collection(name, 4)
    rows = [{"lang": lang, "year": year, "draft": draft}
            for lang in ("en", "de") for year in (2023, 2024) for draft in (True, False)]
    vectors = np.eye(4, dtype=np.float32)[np.arange(len(rows)) % 4] + 0.01 * np.arange(len(rows))[:, None]
    store.upsert(name, [f"r{i}" for i in range(len(rows))], vectors, rows)
    assert store.count(name, {"lang": "en"}) == 4
    assert store.count(name, {"lang": "en", "year": 2024}) == 2
    assert store.count(name, {"draft": True}) == 4
    assert store.count(name, {"year": "2024"}) == 0  # types matter: a string is not a number
    assert store.count(name, {"lang": "fr"}) == 0
    assert store.count(name, {"lang') OR 1=1 --": "en"}) == 0  # keys and values are data, never SQL
    hits = store.search(name, [1, 0, 0, 0], k=10, filters={"lang": "de", "draft": False}).hits
    assert len(hits) == 2 and all(h.metadata["lang"] == "de" and h.metadata["draft"] is False for h in hits)
    for bad in ({"nested": {"a": 1}}, {"list": [1]}, {"": 1}, {f"k{i}": i for i in range(20)}):
        with pytest.raises(VectorStoreError) as caught:
            store.count(name, bad)
        assert caught.value.code == "invalid_filter"


@pytest.mark.parametrize("metric", ["cosine", "l2", "inner_product"])
def test_distances_match_their_definitions(store, metric):
    name = unique(metric.replace("_", "-"))
    store.create_collection(name, 6, metric=metric)
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(40, 6)).astype(np.float32)
    store.upsert(name, [str(i) for i in range(40)], vectors)
    query = rng.normal(size=6).astype(np.float32)
    if metric == "cosine":
        expected = 1 - (vectors @ query) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    elif metric == "l2":
        expected = np.linalg.norm(vectors - query, axis=1)
    else:
        expected = -(vectors @ query)
    order = np.argsort(expected)[:5]
    hits = store.search(name, query, k=5, exact=True).hits
    assert [int(hit.id) for hit in hits] == order.tolist()
    assert np.allclose([hit.distance for hit in hits], expected[order], atol=1e-4)


@pytest.mark.parametrize("index", [{"type": "hnsw", "m": 16, "ef_construction": 64, "ef_search": 40},
                                   {"type": "ivfflat", "lists": 50, "probes": 8}], ids=["hnsw", "ivfflat"])
def test_index_is_used_and_recall_is_high_on_structured_data(store, index):
    name = unique(index["type"])
    data = clustered(5100, 96, clusters=40, seed=7)
    base, queries = data[:5000], data[5000:]
    store.create_collection(name, 96, index=index, build_index=False)  # load first, then index
    store.insert(name, [str(i) for i in range(len(base))], base)
    assert "Seq Scan" in store.explain(name, queries[0], 10)  # no index yet: exact scan
    store.build_index(name)
    plan = store.explain(name, queries[0], 10)
    assert "Index Scan using" in plan and "_embedding_idx" in plan, plan
    assert "Seq Scan" in store.explain(name, queries[0], 10, exact=True)
    truth = np.argsort(1 - queries @ base.T, axis=1)[:, :10]
    recall, exact_recall = [], []
    for query, expected in zip(queries, truth):
        approximate = store.search(name, query, 10)
        assert approximate.strategy == "index"
        recall.append(len({int(hit.id) for hit in approximate.hits} & set(expected)) / 10)
        exact = store.search(name, query, 10, exact=True)
        exact_recall.append(len({int(hit.id) for hit in exact.hits} & set(expected)) / 10)
    assert np.mean(exact_recall) >= 0.99  # the sequential scan is the ground truth
    assert np.mean(recall) >= 0.9, np.mean(recall)
    # More effort never hurts; asking for more neighbours than ef_search still returns k.
    assert len(store.search(name, queries[0], 100).hits) == 100


def test_selective_filters_still_return_the_exact_k_nearest(store):
    name = unique("selective")
    data = clustered(3000, 32, clusters=20, seed=5)
    store.create_collection(name, 32, index={"type": "hnsw", "m": 8, "ef_construction": 32, "ef_search": 20},
                            build_index=False)
    store.insert(name, [str(i) for i in range(3000)], data,
                 [{"shard": i % 100, "half": i % 2} for i in range(3000)])
    store.build_index(name)
    # pgvector filters after the index scan, so a selective filter can leave fewer than k of the
    # ef_search candidates; the store then completes the answer with an exact scan. Either way the
    # caller gets the k nearest matching items.
    for filters, members in (({"shard": 42}, range(42, 3000, 100)), ({"half": 1}, range(1, 3000, 2))):
        result = store.search(name, data[0], k=10, filters=filters)
        assert len(result.hits) == 10
        assert all(hit.metadata[key] == value for hit in result.hits for key, value in filters.items())
        expected = sorted(members, key=lambda i: 1 - float(data[i] @ data[0]))[:10]
        found = [int(hit.id) for hit in result.hits]
        assert found == expected if filters == {"shard": 42} else len(set(found) & set(expected)) >= 8


def test_filtered_index_scan_that_comes_up_short_falls_back_to_exact(store):
    name = unique("fallback")
    data = clustered(2000, 32, clusters=10, seed=8)
    near = set(np.argsort(1 - data @ data[0])[:1000].tolist())
    store.create_collection(name, 32, index={"type": "hnsw", "m": 8, "ef_construction": 32, "ef_search": 20},
                            build_index=False)
    store.insert(name, [str(i) for i in range(2000)], data,
                 [{"side": "near" if i in near else "far"} for i in range(2000)])
    store.build_index(name)
    assert "Index Scan using" in store.explain(name, data[0], 10, {"side": "far"})  # half the rows match
    # The 20 candidates the HNSW scan yields are all "near": the filter removes every one of them.
    result = store.search(name, data[0], k=10, filters={"side": "far"})
    assert result.strategy == "exact" and len(result.hits) == 10
    expected = sorted(set(range(2000)) - near, key=lambda i: 1 - float(data[i] @ data[0]))[:10]
    assert [int(hit.id) for hit in result.hits] == expected


def test_vectors_move_through_arrow_and_binary_copy(store):
    name = unique("arrow")
    store.create_collection(name, 16)
    matrix = clustered(200, 16, clusters=4, seed=2)
    table = arrow_io.vector_table([f"a{i}" for i in range(200)], matrix, [{"i": i} for i in range(200)])
    received = arrow_io.read_parquet(arrow_io.write_parquet(table, compression="zstd"))
    vectors = arrow_io.arrow_to_vectors(received["vector"])
    store.insert(name, received["id"].to_pylist(), vectors,
                 [json.loads(text) for text in received["metadata"].to_pylist()])
    back = store.get(name, ["a0", "a199"], include_vectors=True)
    assert np.array_equal(np.asarray([item.vector for item in back], dtype=np.float32), matrix[[0, 199]])
    streamed = arrow_io.read_ipc_stream(arrow_io.write_ipc_stream(table, compression="lz4"))
    assert streamed.equals(table)


def test_arrow_vectors_convert_without_copying():
    matrix = np.random.default_rng(0).random((100, 8), dtype=np.float32)
    column = arrow_io.vectors_to_arrow(matrix)
    assert np.shares_memory(arrow_io.arrow_to_vectors(column), matrix)
    rows = [{"index": i, "output": [0.5, float(i)], "error": None} for i in range(10)]
    for compression in ("lz4", "zstd"):
        assert arrow_io.read_parquet(arrow_io.write_parquet(rows, compression)).to_pylist() == rows
        assert arrow_io.read_ipc_stream(arrow_io.write_ipc_stream(rows, compression)).to_pylist() == rows


# --- HTTP ---------------------------------------------------------------------------------------------


def test_vector_upsert_and_search_over_http(api, admin_api, app):
    name = unique("http")
    items = [{"id": f"p{i}", "vector": [float(i == j) for j in range(4)], "metadata": {"group": i % 2}}
             for i in range(4)]
    response = api.post(f"/api/v1/vectors/{name}", {"items": items})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["upserted"] == 4
    described = api.get(f"/api/v1/vectors/{name}").get_json()
    assert described["dimension"] == 4 and described["count"] == 4 and described["model"] is None
    found = api.post(f"/api/v1/vectors/{name}/search", {"vector": [0.9, 0.1, 0, 0], "k": 2}).get_json()
    assert [hit["id"] for hit in found["results"]] == ["p0", "p1"]
    assert found["results"][0]["metadata"] == {"group": 0} and found["metric"] == "cosine"
    filtered = api.post(f"/api/v1/vectors/{name}/search",
                        {"vector": [0.9, 0.1, 0, 0], "k": 3, "filter": {"group": 1}}).get_json()
    assert [hit["id"] for hit in filtered["results"]] == ["p1", "p3"]
    assert api.get(f"/api/v1/vectors/{name}/count?filter=" + json.dumps({"group": 0})).get_json()["count"] == 2
    # Deleting items or the collection is model_admin's (inference_user writes and searches only).
    assert api.post(f"/api/v1/vectors/{name}/delete", {"ids": ["p0"]}).status_code == 403
    assert api.delete(f"/api/v1/vectors/{name}").status_code == 403
    assert admin_api.post(f"/api/v1/vectors/{name}/delete", {"ids": ["p0"]}).get_json()["deleted"] == 1
    assert admin_api.delete(f"/api/v1/vectors/{name}").status_code == 200
    assert api.post(f"/api/v1/vectors/{name}/search", {"vector": [1, 0, 0, 0]}).status_code == 404


def test_bad_vector_requests_are_4xx(api):
    name = unique("bad-http")
    api.post(f"/api/v1/vectors/{name}", {"items": [{"id": "a", "vector": [1, 2, 3]}]})
    cases = [
        (f"/api/v1/vectors/{name}/search", {"vector": [1, 2, 3], "k": 101}, 422, "invalid_request"),
        (f"/api/v1/vectors/{name}/search", {"vector": [1, 2, 3], "k": 0}, 422, "invalid_request"),
        (f"/api/v1/vectors/{name}/search", {"vector": [1, 2]}, 422, "dimension_mismatch"),
        (f"/api/v1/vectors/{name}/search", {"vector": [1, 2, 3], "text": "both"}, 422, "invalid_request"),
        (f"/api/v1/vectors/{name}/search", {"vector": [1, 2, 3], "filter": {"a": {"b": 1}}}, 422, "invalid_request"),
        (f"/api/v1/vectors/{name}", {"items": [{"id": "b", "vector": [1, 2]}]}, 422, "dimension_mismatch"),
        (f"/api/v1/vectors/{name}", {"items": [{"id": "b"}]}, 422, "invalid_request"),
        (f"/api/v1/vectors/{name}", {"items": []}, 422, "invalid_request"),
        (f"/api/v1/vectors/{name}", {"items": [{"id": "b", "vector": [1e39, 0, 0]}]}, 422, "invalid_vector"),
        ("/api/v1/vectors/bad%20name", {"items": [{"id": "b", "vector": [1, 2, 3]}]}, 422, "invalid_collection_name"),
    ]
    for path, body, status, code in cases:
        response = api.post(path, body)
        assert (response.status_code, response.get_json()["error"]["code"]) == (status, code), (body, response.get_json())
    assert api.post(f"/api/v1/vectors/{name}/search", {"vector": [1, 2, float("nan")]}).status_code == 400
    assert api.get(f"/api/v1/vectors/{name}/count?filter=%7Bnope").status_code == 400


def test_vectors_need_the_predict_permission_to_search_and_read_to_list(api, keys):
    reader = api.as_key(keys["reader"])
    assert reader.post("/api/v1/vectors/anything/search", {"vector": [1.0]}).status_code == 403
    assert reader.post("/api/v1/vectors/anything", {"items": [{"id": "1", "vector": [1.0]}]}).status_code == 403
    assert reader.get("/api/v1/vectors").status_code == 200  # reading the tenant's own resources
    assert api.as_key(None).get("/api/v1/vectors").status_code == 401


def test_collection_created_over_http_with_ivfflat_and_deferred_index(api, workers):
    name = unique("ivf-http")
    body = {"dimension": 8, "model": None, "metric": "l2", "index": {"type": "ivfflat", "lists": 4, "probes": 2},
            "defer_index": True}
    created = api.client.put(f"/api/v1/vectors/{name}", json=body, headers=api.headers())
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["index"]["state"] == "pending"
    again = api.client.put(f"/api/v1/vectors/{name}", json=body, headers=api.headers())
    assert again.status_code == 200
    other = api.client.put(f"/api/v1/vectors/{name}", json={**body, "dimension": 9}, headers=api.headers())
    assert other.status_code == 409
    data = clustered(400, 8, clusters=4, seed=9, latent=4)
    items = [{"id": str(i), "vector": row.tolist()} for i, row in enumerate(data)]
    assert api.post(f"/api/v1/vectors/{name}", {"items": items}).status_code == 200
    built = api.post(f"/api/v1/vectors/{name}/index", {"wait": 30})  # a job on the maintenance queue
    assert built.status_code == 200, built.get_json()
    assert built.get_json()["index"]["state"] == "ready" and built.get_json()["count"] == 400
    found = api.post(f"/api/v1/vectors/{name}/search", {"vector": data[5].tolist(), "k": 1}).get_json()
    assert found["results"][0]["id"] == "5" and found["strategy"] == "index"


def test_texts_are_embedded_by_the_worker_and_searchable_by_text(api, workers):
    name = unique("texts")
    items = [
        {"id": "cat", "text": "The cat sits on the mat.", "metadata": {"kind": "animal"}},
        {"id": "revenue", "text": "Quarterly revenue grew by four percent.", "metadata": {"kind": "finance"}},
        {"id": "football", "text": "The striker scored twice in the final.", "metadata": {"kind": "sport"}},
        {"id": "given", "vector": [0.0] * 383 + [1.0], "metadata": {"kind": "vector"}},
    ]
    response = api.post(f"/api/v1/vectors/{name}", {"items": items, "wait": 30})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["upserted"] == 4 and body["embedded"] == 3 and body["model"]["name"] == "all-MiniLM-L6-v2"
    described = api.get(f"/api/v1/vectors/{name}").get_json()
    assert (described["dimension"], described["model"], described["count"]) == (384, "all-MiniLM-L6-v2", 4)
    found = api.post(f"/api/v1/vectors/{name}/search", {"text": "a kitten resting on a rug", "k": 3, "wait": 30})
    assert found.status_code == 200, found.get_json()
    results = found.get_json()["results"]
    assert results[0]["id"] == "cat" and results[0]["metadata"] == {"kind": "animal"}
    assert results[0]["distance"] < results[1]["distance"]
    finance = api.post(f"/api/v1/vectors/{name}/search",
                       {"text": "company earnings", "k": 3, "filter": {"kind": "finance"}, "wait": 30}).get_json()
    assert [hit["id"] for hit in finance["results"]] == ["revenue"]
    job = api.get(f"/api/v1/jobs/{found.get_json()['job_id']}").get_json()
    assert job["status"] == "succeeded" and job["kind"] == "vectors"
    # A vectors-only collection cannot take text.
    plain = unique("plain")
    api.post(f"/api/v1/vectors/{plain}", {"items": [{"id": "a", "vector": [1.0, 0.0]}]})
    refused = api.post(f"/api/v1/vectors/{plain}/search", {"text": "hello", "wait": 30})
    assert refused.status_code == 422 and refused.get_json()["error"]["code"] == "collection_has_no_model"


def test_embed_jobs_with_params_collection_fill_the_store(api, workers, store):
    name = unique("embed-job")
    texts = ["Alpine lakes are cold in spring.", "Interest rates rose again.", "A robot vacuums the floor."]
    response = api.post("/api/v1/predict", {"task": "embed", "inputs": texts, "params": {"collection": name},
                                            "wait": 30})
    assert response.status_code == 200, response.get_json()
    vectors = response.get_json()["outputs"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _count(store, name) < 3:
        time.sleep(0.1)
    assert store.count(name) == 3
    described = store.get_collection(name)
    assert (described.dimension, described.model) == (384, "all-MiniLM-L6-v2")
    # Generated ids come from the text: running the same job again (or a redelivery) adds nothing.
    api.post("/api/v1/predict", {"task": "embed", "inputs": texts, "params": {"collection": name}, "wait": 30})
    assert store.count(name) == 3
    nearest = store.search(name, vectors[1], k=1).hits[0]
    assert nearest.distance < 1e-5
    # Explicit ids and metadata, one per input.
    response = api.post("/api/v1/predict", {"task": "embed", "inputs": ["Snow on the peaks.", "Bond yields fell."],
                                            "params": {"collection": name, "ids": ["snow", "bonds"],
                                                       "metadata": [{"topic": "nature"}, {"topic": "finance"}]},
                                            "wait": 30})
    assert response.status_code == 200, response.get_json()
    assert [item.metadata for item in store.get(name, ["snow", "bonds"])] == [{"topic": "nature"},
                                                                             {"topic": "finance"}]
    assert store.count(name) == 5


def _count(store: VectorStore, name: str) -> int:
    try:
        return store.count(name)
    except VectorStoreError:
        return 0


def test_worker_reads_queued_messages_of_the_previous_release_and_refuses_unknown_versions(api, workers):
    """Messages sent straight to the queue as another release's sender would: the old keyword arguments
    (no version) run; a version this worker does not know fails its job, and the worker goes on."""
    name = unique("versions")
    response = api.post(f"/api/v1/vectors/{name}", {"items": [
        {"id": "cat", "text": "The cat sits on the mat."},
        {"id": "revenue", "text": "Quarterly revenue grew by four percent."}], "wait": 30})
    assert response.status_code == 200, response.get_json()

    def send(kwargs: dict) -> jobs.Job:
        job, _ = jobs.create_job(jobs.NewJob(owner="versions-test", kind="vectors", task="vectors.search", total=1))
        celery_app.send_task(task_names.VECTORS_SEARCH_TEXT, queue="gpu", task_id=job.id,
                             kwargs={"job_id": job.id, **kwargs})
        return wait_for(lambda: (row := jobs.get_job(job.id)) and row.status in ("succeeded", "failed") and row,
                        60, "the search job to finish")

    newer = send({"version": 2, "collection": name, "text": "a kitten", "k": 1})
    assert newer.status == "failed" and newer.error["code"] == "unsupported_message"
    assert "version 2 is not supported" in newer.error["message"]
    old = send({"collection": name, "text": "a kitten on a rug", "k": 1, "filter": None, "reply_to": None})
    assert old.status == "succeeded", old.error
    assert [hit["id"] for hit in old.result["results"]] == ["cat"]
