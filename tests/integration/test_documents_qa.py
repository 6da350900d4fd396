"""Documents and question answering over HTTP with a real gpu worker running the Haystack pipelines
(MiniLM embeddings, SmolLM2 generation) against the pgvector passage table in real PostgreSQL."""
from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support.waiting import finished

# Calls this module makes to the stores directly act for the default tenant, as the suite's keys do.
pytestmark = pytest.mark.usefixtures("in_default_tenant")

DOCUMENTS = [
    {"id": "etna", "meta": {"topic": "geology", "source": "atlas"},
     "content": "Mount Etna is an active stratovolcano on the east coast of Sicily, Italy. It is one of the "
                "tallest active volcanoes in Europe, standing about 3,357 metres high. The city of Catania "
                "lies at its foot. Eruptions of Etna have been recorded since 1500 BC."},
    {"id": "coffee", "meta": {"topic": "food", "source": "almanac"},
     "content": "Coffee is brewed from the roasted seeds of the Coffea plant. The drink is thought to have "
                "originated in Ethiopia. Brazil is the largest producer of coffee in the world, followed by "
                "Vietnam. Espresso is made by forcing hot water through finely ground beans."},
    {"id": "rust", "meta": {"topic": "software", "source": "almanac"},
     "content": "Rust is a systems programming language focused on memory safety. Version 1.0 of Rust was "
                "released in May 2015. Its borrow checker prevents data races at compile time. Cargo is the "
                "build tool and package manager of Rust."},
    {"id": "marathon", "meta": {"topic": "sports", "source": "atlas", "year": 1921},
     "content": "The marathon is a long-distance foot race. The official marathon distance is 42.195 "
                "kilometres. That distance was standardised by the IAAF in 1921. Eliud Kipchoge ran a "
                "marathon in under two hours in Vienna in 2019."},
]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"




def index(api, collection: str, documents: list[dict[str, Any]]) -> dict[str, Any]:
    return finished(api, api.post("/api/v1/documents", {"documents": documents, "collection": collection,
                                                        "wait": 60}))


def ask(api, collection: str, question: str, **extra: Any) -> dict[str, Any]:
    body = {"question": question, "collection": collection, "generate": False, "wait": 60, **extra}
    return finished(api, api.post("/api/v1/qa", body))


def listed(api, collection: str) -> dict[str, Any]:
    response = api.get(f"/api/v1/documents?collection={collection}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


@pytest.fixture(scope="module")
def library(workers, app, keys) -> str:
    """A collection holding the four documents above."""
    from tests.integration.conftest import Api

    api = Api(app.test_client(), keys["inference_user"])
    collection = unique("library")
    result = index(api, collection, DOCUMENTS)
    assert [document["id"] for document in result["documents"]] == ["etna", "coffee", "rust", "marathon"]
    assert all(document["passages"] >= 1 for document in result["documents"])
    assert result["model"]["embedder"]["name"] == "all-MiniLM-L6-v2"
    return collection


@pytest.mark.parametrize(("question", "document_id", "fact"), [
    ("Which country produces the most coffee?", "coffee", "Brazil"),
    ("How long is the official marathon distance?", "marathon", "42.195"),
    ("When was version 1.0 of Rust released?", "rust", "2015"),
    ("How high is Mount Etna?", "etna", "3,357"),
])
def test_the_right_document_answers(api, library, question, document_id, fact):
    result = ask(api, library, question)
    assert result["sources"][0]["document_id"] == document_id, result["sources"]
    assert fact in result["extractive_answer"]["text"], result["extractive_answer"]
    assert result["extractive_answer"]["document_id"] == document_id
    assert result["answer"] == result["extractive_answer"]["text"] and result["answer_source"] == "extractive"
    scores = [source["score"] for source in result["sources"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 4  # top_k 5, four documents indexed
    # The user's metadata comes back; Cortex's bookkeeping keys do not.
    assert result["sources"][0]["meta"] == next(d["meta"] for d in DOCUMENTS if d["id"] == document_id)


def test_generated_answer_with_smollm2(api, library):
    result = ask(api, library, "Which country is the largest producer of coffee?", generate=True, top_k=3)
    assert result["model"]["generator"]["name"] == "SmolLM2-135M-Instruct"
    assert result["answer_source"] == "generated" and result["answer"].strip()
    assert result["generation"]["generated_tokens"] >= 1 and result["generation"]["prompt_tokens"] > 50
    # The small model's wording is its own; the grounded, extractive answer is always there beside it.
    assert "Brazil" in result["extractive_answer"]["text"]
    assert result["sources"][0]["document_id"] == "coffee" and len(result["sources"]) == 3


def test_metadata_filters_narrow_retrieval(api, library):
    result = ask(api, library, "How high is Mount Etna?", filters={"source": "almanac"})
    assert {source["document_id"] for source in result["sources"]} == {"coffee", "rust"}
    any_of = ask(api, library, "How high is Mount Etna?", filters={"topic": ["sports", "geology"]})
    assert [source["document_id"] for source in any_of["sources"]] == ["etna", "marathon"]
    numeric = ask(api, library, "running", filters={"year": 1921})
    assert [source["document_id"] for source in numeric["sources"]] == ["marathon"]
    none = ask(api, library, "How high is Mount Etna?", filters={"topic": "astronomy"})
    assert none["sources"] == [] and none["extractive_answer"] is None
    assert none["answer"] == "No indexed passage matches the filters."


def test_collections_are_separate(api, library):
    other = unique("other")
    index(api, other, [{"id": "etna", "content": "Etna is also the name of a small town in Pennsylvania."}])
    result = ask(api, other, "How high is Mount Etna?")
    assert [source["document_id"] for source in result["sources"]] == ["etna"]
    assert "Pennsylvania" in result["sources"][0]["passage"]
    # The library's Etna is untouched by a document of the same id in another collection.
    assert "3,357" in ask(api, library, "How high is Mount Etna?")["extractive_answer"]["text"]


def test_reindexing_replaces_the_documents_passages(api):
    collection = unique("reindex")
    sentences = [f"Project Heron milestone {n} was reviewed by the committee in week {n}." for n in range(60)]
    long_version = " ".join(sentences[:30] + ["The launch code of project Heron is 4417."] + sentences[30:])
    first = index(api, collection, [{"id": "heron", "content": long_version, "meta": {"version": 1}}])
    assert first["documents"][0]["passages"] >= 5
    assert "4417" in ask(api, collection, "What is the launch code of project Heron?")["extractive_answer"]["text"]

    second = index(api, collection, [{"id": "heron", "content": "Project Heron was cancelled in March 2024.",
                                      "meta": {"version": 2}}])
    assert second["documents"] == [{"id": "heron", "passages": 1}]
    assert second["stale_passages_deleted"] == first["documents"][0]["passages"] - 1
    result = ask(api, collection, "What is the launch code of project Heron?", top_k=20)
    assert [source["passage"] for source in result["sources"]] == ["Project Heron was cancelled in March 2024."]
    assert result["sources"][0]["meta"] == {"version": 2}
    documents = listed(api, collection)
    assert documents["total"] == 1 and documents["documents"][0]["passages"] == 1
    assert documents["documents"][0]["meta"] == {"version": 2}
    # The same text sent again without an id gets the same derived id: replaced, not duplicated.
    for _ in range(2):
        index(api, collection, [{"content": "An anonymous note about herons."}])
    assert listed(api, collection)["total"] == 2


def test_empty_collection_answers_that_nothing_is_indexed(api, workers):
    result = ask(api, unique("empty"), "Is anything here?", generate=True)
    assert result["sources"] == [] and result["extractive_answer"] is None
    assert result["answer"].startswith("Nothing is indexed in collection") and result["indexed_passages"] == 0


def test_list_delete_and_job_record(api, admin_api, workers):
    collection = unique("lifecycle")
    accepted = api.post("/api/v1/documents", {"collection": collection, "wait": 0, "documents": [
        {"id": "a/b c", "content": "Alpha document. It has two sentences.", "meta": {"kind": "note"}},
        {"id": "z", "content": "Zulu document."}]})
    assert accepted.status_code == 202
    job_id = accepted.get_json()["job_id"]
    result = finished(api, accepted)
    job = api.get(f"/api/v1/jobs/{job_id}").get_json()
    assert job["kind"] == "documents" and job["status"] == "succeeded" and job["result"]["passages_written"] == 2
    documents = listed(api, collection)
    assert documents["total"] == 2 and documents["collections"][collection] == {"documents": 2, "passages": 2}
    note = next(d for d in documents["documents"] if d["id"] == "a/b c")
    assert note["meta"] == {"kind": "note"} and note["characters"] == len("Alpha document. It has two sentences.")
    assert result["collection"] == collection

    assert api.delete(f"/api/v1/documents/a/b c?collection={collection}").status_code == 403  # model_admin's
    deleted = admin_api.delete(f"/api/v1/documents/a/b c?collection={collection}")
    assert deleted.status_code == 200 and deleted.get_json()["passages_deleted"] == 1
    assert admin_api.delete(f"/api/v1/documents/a/b c?collection={collection}").status_code == 404
    assert [d["id"] for d in listed(api, collection)["documents"]] == ["z"]
    assert api.get("/api/v1/documents?collection=bad name").status_code == 422
    assert api.get("/api/v1/documents?limit=0").status_code == 422


@pytest.mark.parametrize("body", [
    {"documents": []},
    {"documents": [{"content": "x" * 50_001}]},
    {"documents": [{"content": "ok", "meta": {"nested": {"a": 1}}}]},
    {"documents": [{"content": "ok", "meta": {"tags": ["a", "b"]}}]},
    {"documents": [{"content": "ok", "meta": {"collection": "elsewhere"}}]},
    {"documents": [{"content": "ok", "meta": {"bad key": 1}}]},
    {"documents": [{"content": "ok", "id": ""}]},
    {"documents": [{"content": "one", "id": "same"}, {"content": "two", "id": "same"}]},
    {"documents": [{"content": "ok"}], "collection": "no spaces"},
    {"documents": [{"content": "ok", "extra": 1}]},
    {"documents": [{"content": 5}]},
    {"documents": [{"content": "ok"}] * 51},
])
def test_bad_documents_are_422_and_store_nothing(api, body):
    collection = body.get("collection", unique("bad"))
    response = api.post("/api/v1/documents", {"collection": collection, **body})
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"]["code"] == "invalid_request"
    if collection != "no spaces":
        assert listed(api, collection)["total"] == 0


@pytest.mark.parametrize("body", [
    {},
    {"question": ""},
    {"question": "  "},
    {"question": "ok", "top_k": 0},
    {"question": "ok", "top_k": 21},
    {"question": "ok", "top_k": "5"},
    {"question": "ok", "filters": {"topic": {"$ne": "x"}}},
    {"question": "ok", "filters": {"collection": "other"}},
    {"question": "ok", "collection": "../etc"},
    {"question": "q" * 1001},
])
def test_bad_questions_are_422(api, body):
    response = api.post("/api/v1/qa", body)
    assert response.status_code == 422, response.get_json()


def test_roles(app, keys):
    reader = app.test_client()
    headers = {"Authorization": f"Bearer {keys['reader']}"}
    assert reader.post("/api/v1/qa", json={"question": "hi"}, headers=headers).status_code == 403
    assert reader.post("/api/v1/documents", json={"documents": [{"content": "x"}]}, headers=headers).status_code == 403
    assert reader.delete("/api/v1/documents/x", headers=headers).status_code == 403
    # A reader reads its tenant's resources: the list of documents.
    assert reader.get("/api/v1/documents", headers=headers).status_code == 200


def test_haystack_health(api, library):
    response = api.get("/api/v1/health/haystack")
    assert response.status_code == 200, response.get_json()
    health = response.get_json()
    assert health["status"] == "ok" and health["pipelines_run_on"]
    assert health["packages"]["haystack-ai"].startswith("3.")
    assert health["store"]["embedding_dimension"] == 384
    assert health["store"]["collections"][library] == {"documents": 4, "passages": 4}
