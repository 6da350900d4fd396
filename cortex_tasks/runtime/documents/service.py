"""Indexing documents and answering questions with the Haystack pipelines (run by the gpu worker).

Each passage row carries, in `meta`, the user's metadata plus `collection`, `document_id`,
`passage_index`, `passage_count`, `document_chars`, `indexed_by` and `indexed_at`.

Haystack (and torch through it) is imported inside the functions that run a pipeline: every gpu worker
imports this module through its task, and only the ones that index or answer pay for Haystack.
"""
from __future__ import annotations

import hashlib
import re
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from cortex_tasks.core.documents.catalog import user_meta
from cortex_tasks.core.documents.requests import IndexRequest, QuestionRequest
from cortex_tasks.core.errors import ItemError
from cortex_tasks.core.jobs.running import JobInputError

# SmolLM2 often opens with "The answer is:"; the answer field holds the answer itself.
ANSWER_PREAMBLE = re.compile(r"^\s*(?:the\s+)?answer(?:\s+is)?\s*:\s*", re.IGNORECASE)


def _validated(model: type[IndexRequest | QuestionRequest], payload: dict[str, Any]) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = [{"field": ".".join(str(part) for part in error["loc"]), "message": error["msg"]}
                    for error in exc.errors(include_url=False, include_input=False)]
        raise JobInputError("invalid_request", "The job's payload is not valid.", {"errors": problems}) from None
    except ItemError as exc:  # a shared item rule (core/validation/items.py): the same code as at the gateway
        raise JobInputError(exc.code, exc.message, exc.details) from None


def generated_document_id(content: str) -> str:
    """Ids for documents sent without one: derived from the content, so sending the same text again
    (or a redelivered job) replaces it instead of adding a copy."""
    return "d-" + hashlib.sha256(content.encode()).hexdigest()[:32]


def _milliseconds(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def index_documents(collection: str, documents: list[dict[str, Any]], indexed_by: str | None = None) -> dict[str, Any]:
    """Split, embed and write the documents; a document id that is already indexed is replaced."""
    from haystack import Document

    from cortex_tasks.runtime.documents.pipelines import document_store, indexing_pipeline

    request = _validated(IndexRequest, {"collection": collection, "documents": documents})
    started = time.perf_counter()
    indexed_at = datetime.now(UTC).isoformat()
    sources = []
    for document in request.documents:
        document_id = document.id or generated_document_id(document.content)
        sources.append(Document(id=document_id, content=document.content, meta={
            **document.meta, "collection": request.collection, "document_id": document_id,
            "document_chars": len(document.content), "indexed_by": indexed_by, "indexed_at": indexed_at}))
    output = indexing_pipeline().run({"splitter": {"documents": sources}}, include_outputs_from={"passage_keys"})
    written = output["passage_keys"]["documents"]
    counts: dict[str, int] = {}
    for passage in written:
        counts[passage.meta["document_id"]] = passage.meta["passage_count"]
    # Passages beyond the new count belong to an earlier, longer version of the document. Deleted after
    # the new ones are written, so a re-indexed document never disappears from answers meanwhile.
    store = document_store()
    stale = 0
    for source in sources:
        stale += store.delete_passages_from(request.collection, source.id or "", counts.get(source.id or "", 0))
    model = output["embedder"]["meta"].get("model")
    return {"collection": request.collection,
            "documents": [{"id": source.id, "passages": counts.get(source.id or "", 0)} for source in sources],
            "passages_written": output["writer"]["documents_written"], "stale_passages_deleted": stale,
            "model": {"embedder": model},
            "timings": {"pipeline_ms": _milliseconds(started)}}


def haystack_filters(collection: str, filters: dict[str, Any] | None) -> dict[str, Any]:
    """Haystack filter syntax for the collection plus equality (or any-of, for a list) on user metadata."""
    conditions: list[dict[str, Any]] = [{"field": "meta.collection", "operator": "==", "value": collection}]
    for key, value in (filters or {}).items():
        operator = "in" if isinstance(value, list) else "=="
        conditions.append({"field": f"meta.{key}", "operator": operator, "value": value})
    return {"operator": "AND", "conditions": conditions}


def _source(document: Any) -> dict[str, Any]:
    return {"document_id": document.meta.get("document_id"), "passage_index": document.meta.get("passage_index"),
            "passage": document.content, "score": round(float(document.score or 0.0), 4),
            "meta": user_meta(document.meta)}


def answer_question(question: str, top_k: int = 5, collection: str = "default",
                    filters: dict[str, Any] | None = None, generate: bool = True,
                    max_tokens: int = 96) -> dict[str, Any]:
    """Retrieve the top_k passages of the collection, answer from them (generated and extractive)."""
    from cortex_tasks.runtime.documents.components import EMBEDDING_MODEL
    from cortex_tasks.runtime.documents.pipelines import (
        PROMPT_PASSAGES,
        PROMPT_SCORE_GAP,
        document_store,
        question_pipeline,
    )

    request = _validated(QuestionRequest, {"question": question, "top_k": top_k, "collection": collection,
                                           "filters": filters, "generate": generate, "max_tokens": max_tokens})
    started = time.perf_counter()
    scope = haystack_filters(request.collection, None)
    indexed = document_store().count_documents_by_filter(scope)
    body: dict[str, Any] = {"question": request.question, "collection": request.collection,
                            "extractive_answer": None, "sources": []}
    if indexed == 0:
        return {**body, "answer": f"Nothing is indexed in collection {request.collection!r} yet: "
                                  "add documents with POST /api/v1/documents first.",
                "answer_source": "none", "indexed_passages": 0, "model": None,
                "timings": {"pipeline_ms": _milliseconds(started)}}
    data: dict[str, Any] = {
        "query_embedder": {"text": request.question},
        "retriever": {"filters": haystack_filters(request.collection, request.filters), "top_k": request.top_k},
        "extractor": {"query": request.question},
    }
    if request.generate:
        data["prompt_builder"] = {"question": request.question, "template_variables": {
            "max_passages": PROMPT_PASSAGES, "score_gap": PROMPT_SCORE_GAP}}
        data["generator"] = {"max_tokens": request.max_tokens}
        data["answer_builder"] = {"query": request.question}
    output = question_pipeline(request.generate).run(
        data, include_outputs_from={"retriever", "query_embedder", "generator"})
    retrieved = output["retriever"]["documents"]
    model: dict[str, Any] = {"embedder": output["query_embedder"]["meta"].get("model")
                             or {"name": EMBEDDING_MODEL}, "generator": None}
    body.update(indexed_passages=indexed, sources=[_source(document) for document in retrieved])
    if not retrieved:
        return {**body, "answer": "No indexed passage matches the filters.", "answer_source": "none",
                "model": model, "timings": {"pipeline_ms": _milliseconds(started)}}
    extracted = output["extractor"]["answers"]
    if extracted:
        best = extracted[0]
        body["extractive_answer"] = {"text": best.data, "score": best.score,
                                     "document_id": best.document.meta.get("document_id"),
                                     "passage_index": best.document.meta.get("passage_index"),
                                     "sentence_similarity": best.meta.get("sentence_similarity")}
    answer, answer_source = (body["extractive_answer"] or {}).get("text"), "extractive"
    if request.generate:
        generated = output["answer_builder"]["answers"]
        generation = (output["generator"]["meta"] or [{}])[0]
        model["generator"] = generation.get("model")
        text = ANSWER_PREAMBLE.sub("", generated[0].data).strip() if generated and generated[0].data else ""
        if text:
            answer, answer_source = text, "generated"
        body["generation"] = {key: generation.get(key) for key in
                              ("finish_reason", "prompt_tokens", "generated_tokens", "error") if key in generation}
    return {**body, "answer": answer, "answer_source": answer_source, "model": model,
            "timings": {"pipeline_ms": _milliseconds(started)}}
