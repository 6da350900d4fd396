"""Haystack components over the models the gpu worker has already loaded.

Why custom embedders instead of sentence-transformers-haystack's: the gpu worker loads MiniLM at
start-up for `embed`, vectors and zero-shot; Haystack's SentenceTransformers embedders would load a
second copy of the same weights per component instance (per worker thread here), and their use would
escape Cortex's serving statistics. These components call the one loaded copy through
`models.loaded.get_model`, exactly like every other MiniLM caller. Likewise the generator wraps the
loaded SmolLM2 rather than a Hugging Face generator component that would load it again from the GGUF.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")  # no phoning home: offline by design

from haystack import Document, component
from haystack.dataclasses import ExtractedAnswer

from cortex_tasks.core.documents.catalog import GENERATOR_MODEL  # one name for gateway and worker
from cortex_tasks.core.errors import ItemError
from cortex_tasks.core.validation.generation import GenerationParams
from cortex_tasks.runtime.documents.text_splitting import sentences
from cortex_tasks.runtime.models.loaded import get_model
from cortex_tasks.runtime.vectors.service import embed_texts

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
# The extractive answer reads at most this many sentences (from the best passages first).
MAX_CANDIDATE_SENTENCES = 120
# How much the passage's own retrieval score counts beside the sentence's similarity to the question:
# a sentence that matches well inside a passage that matches well is the better-supported answer.
PASSAGE_WEIGHT = 0.25


def embed(texts: list[str]) -> tuple[np.ndarray, dict[str, str]]:
    """Unit-length MiniLM vectors from the worker's loaded model (counted in its serving statistics)."""
    return embed_texts(EMBEDDING_MODEL, texts)


def passage_id(collection: str, document_id: str, index: int) -> str:
    """Stable passage ids: re-indexing a document overwrites its passages in place, and a redelivered
    job rewrites the same rows instead of adding copies."""
    return hashlib.sha256(f"{collection}\x00{document_id}\x00{index}".encode()).hexdigest()


@component
class PassageKeys:
    """Gives each passage from the DocumentSplitter its stable id, its position and its document's
    passage count (the splitter names passages by content hash, which would leave stale copies)."""

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, list[Document]]:
        counts: dict[tuple[str, str], int] = {}
        for passage in documents:
            key = (passage.meta["collection"], passage.meta["document_id"])
            counts[key] = counts.get(key, 0) + 1
        positions: dict[tuple[str, str], int] = {}
        keyed = []
        for passage in documents:
            key = (passage.meta["collection"], passage.meta["document_id"])
            index = positions.get(key, 0)
            positions[key] = index + 1
            meta = {**passage.meta, "passage_index": index, "passage_count": counts[key]}
            keyed.append(Document(id=passage_id(key[0], key[1], index), content=passage.content, meta=meta))
        return {"documents": keyed}


@component
class CortexDocumentEmbedder:
    """Embeds documents' content with the worker's MiniLM."""

    @component.output_types(documents=list[Document], meta=dict[str, Any])
    def run(self, documents: list[Document]) -> dict[str, Any]:
        if not documents:
            return {"documents": [], "meta": {}}
        vectors, model = embed([document.content or "" for document in documents])
        embedded = [Document(id=document.id, content=document.content, meta=document.meta,
                             embedding=vector.tolist()) for document, vector in zip(documents, vectors, strict=True)]
        return {"documents": embedded, "meta": {"model": model}}


@component
class CortexTextEmbedder:
    """Embeds one query text with the worker's MiniLM."""

    @component.output_types(embedding=list[float], meta=dict[str, Any])
    def run(self, text: str) -> dict[str, Any]:
        vectors, model = embed([text])
        return {"embedding": vectors[0].tolist(), "meta": {"model": model}}


@component
class CortexLocalGenerator:
    """Completes a prompt with the worker's SmolLM2 (greedy: the same question gets the same answer)."""

    def __init__(self, max_tokens: int = 96, system: str | None = None) -> None:
        self.max_tokens, self.system = max_tokens, system

    @component.output_types(replies=list[str], meta=list[dict[str, Any]])
    def run(self, prompt: str, max_tokens: int | None = None) -> dict[str, Any]:
        model = get_model(GENERATOR_MODEL)
        options = GenerationParams(max_tokens=max_tokens or self.max_tokens, temperature=0.0, system=self.system)
        info = {"name": model.info.name, "version": model.info.version}
        try:
            generated = model.generate_one(prompt, options)  # type: ignore[attr-defined]
        except ItemError as exc:  # the prompt does not fit the model's context
            return {"replies": [], "meta": [{"model": info, "error": {"code": exc.code, "message": str(exc)}}]}
        return {"replies": [generated["text"].strip()],
                "meta": [{"model": info, "finish_reason": generated["finish_reason"],
                          "prompt_tokens": generated["prompt_tokens"],
                          "generated_tokens": generated["generated_tokens"]}]}


@component
class SentenceAnswerExtractor:
    """The extractive answer: the sentence of the retrieved passages that best answers the question.

    Each sentence is scored by its MiniLM similarity to the question, blended with its passage's
    retrieval score. A sentence is also scored together with the sentence before it, because a fact is
    often stated about a subject named one sentence earlier ("Mount Etna is ... It is 3,357 metres
    high."); when the pair matches better, the answer is the pair, so it stays readable on its own.
    The answer is always verbatim text of an indexed document, so it is grounded even when the small
    generator's answer is not.
    """

    @component.output_types(answers=list[ExtractedAnswer])
    def run(self, query: str, query_embedding: list[float], documents: list[Document]) -> dict[str, Any]:
        candidates: list[tuple[Document, str, str]] = []  # (passage, sentence, sentence with its predecessor)
        for document in documents:
            previous = None
            for sentence in sentences(document.content or ""):
                if len(candidates) < MAX_CANDIDATE_SENTENCES:
                    candidates.append((document, sentence, f"{previous} {sentence}" if previous else sentence))
                previous = sentence
        if not candidates:
            return {"answers": []}
        texts = list(dict.fromkeys(text for _, sentence, pair in candidates for text in (sentence, pair)))
        vectors, _ = embed(texts)
        similarity = dict(zip(texts, (vectors @ np.asarray(query_embedding, dtype=np.float32)).tolist(), strict=True))
        answers = []
        for document, sentence, pair in candidates:
            best_text = pair if similarity[pair] > similarity[sentence] else sentence
            text_score = similarity[best_text]
            score = (1 - PASSAGE_WEIGHT) * text_score + PASSAGE_WEIGHT * float(document.score or 0.0)
            answers.append(ExtractedAnswer(query=query, score=round(score, 4), data=best_text, document=document,
                                           context=document.content,
                                           meta={"sentence_similarity": round(text_score, 4),
                                                 "sentences": 2 if best_text is pair and pair != sentence else 1}))
        answers.sort(key=lambda answer: answer.score, reverse=True)
        return {"answers": answers[:3]}
