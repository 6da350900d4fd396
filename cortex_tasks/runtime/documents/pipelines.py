"""The Haystack pipelines, built once per worker thread, over one shared passage store.

The store (`store.CortexPassageStore`, over Cortex's vector store) takes a pooled connection per call,
so the gpu worker's threads share it. Pipelines stay one per thread: Haystack does not promise that one
Pipeline object runs safely in several threads at once, and building one is cheap (the components hold
no weights; the models are the worker's loaded ones).

Indexing:  DocumentSplitter (sentence-packed passages) -> PassageKeys -> CortexDocumentEmbedder -> DocumentWriter
Answering: CortexTextEmbedder -> CortexEmbeddingRetriever -> PromptBuilder -> CortexLocalGenerator -> AnswerBuilder
                                                          \\-> SentenceAnswerExtractor (extractive answer)
"""
from __future__ import annotations

import os
import threading

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

from haystack import Pipeline
from haystack.components.builders import AnswerBuilder, PromptBuilder
from haystack.components.preprocessors import DocumentSplitter
from haystack.components.writers import DocumentWriter
from haystack.document_stores.types import DuplicatePolicy

from cortex_tasks.runtime.documents.components import (
    CortexDocumentEmbedder,
    CortexLocalGenerator,
    CortexTextEmbedder,
    PassageKeys,
    SentenceAnswerExtractor,
)
from cortex_tasks.runtime.documents.store import CortexEmbeddingRetriever, CortexPassageStore
from cortex_tasks.runtime.documents.text_splitting import passages

# The generator reads only the best few passages: SmolLM2-135M does worse, not better, with a long
# context, and its prompt must leave room for the answer.
PROMPT_PASSAGES = 3
SYSTEM_PROMPT = ("You answer questions from the given context only. Answer in one short sentence. "
                 "If the context does not contain the answer, say that you do not know.")
# Passages scoring far below the best one are left out of the prompt: the small model tends to copy
# whatever text it is given, relevant or not. (No "[1]" labels either: it copied those into answers.)
PROMPT_SCORE_GAP = 0.15
PROMPT_TEMPLATE = """Context:
{% for document in documents[:max_passages] if document.score >= documents[0].score - score_gap %}
{{ document.content }}
{% endfor %}

Question: {{ question }}
Answer:"""

_local = threading.local()


_store = CortexPassageStore()


def document_store() -> CortexPassageStore:
    return _store


def indexing_pipeline() -> Pipeline:
    pipeline = getattr(_local, "indexing", None)
    if pipeline is None:
        pipeline = Pipeline()
        pipeline.add_component("splitter", DocumentSplitter(split_by="function", splitting_function=passages))
        pipeline.add_component("passage_keys", PassageKeys())
        pipeline.add_component("embedder", CortexDocumentEmbedder())
        pipeline.add_component("writer", DocumentWriter(document_store(), policy=DuplicatePolicy.OVERWRITE))
        pipeline.connect("splitter.documents", "passage_keys.documents")
        pipeline.connect("passage_keys.documents", "embedder.documents")
        pipeline.connect("embedder.documents", "writer.documents")
        _local.indexing = pipeline
    return pipeline


def question_pipeline(generate: bool) -> Pipeline:
    """Retrieval and the extractive answer; with `generate`, also the generated answer."""
    attribute = "qa_generate" if generate else "qa_extract"
    pipeline = getattr(_local, attribute, None)
    if pipeline is None:
        pipeline = Pipeline()
        pipeline.add_component("query_embedder", CortexTextEmbedder())
        pipeline.add_component("retriever", CortexEmbeddingRetriever(document_store=document_store()))
        pipeline.add_component("extractor", SentenceAnswerExtractor())
        pipeline.connect("query_embedder.embedding", "retriever.query_embedding")
        pipeline.connect("query_embedder.embedding", "extractor.query_embedding")
        pipeline.connect("retriever.documents", "extractor.documents")
        if generate:
            pipeline.add_component("prompt_builder", PromptBuilder(template=PROMPT_TEMPLATE,
                                                                   required_variables=["question", "documents"]))
            pipeline.add_component("generator", CortexLocalGenerator(system=SYSTEM_PROMPT))
            pipeline.add_component("answer_builder", AnswerBuilder())
            pipeline.connect("retriever.documents", "prompt_builder.documents")
            pipeline.connect("prompt_builder.prompt", "generator.prompt")
            pipeline.connect("generator.replies", "answer_builder.replies")
            pipeline.connect("generator.meta", "answer_builder.meta")
            pipeline.connect("retriever.documents", "answer_builder.documents")
        setattr(_local, attribute, pipeline)
    return pipeline
