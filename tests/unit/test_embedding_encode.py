"""The embedder's own encode (groups of similar token length) gives what sentence-transformers gives."""
from __future__ import annotations

import numpy as np
import pytest

from cortex_tasks.runtime.models.embedding import SentenceEmbedder


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder("all-MiniLM-L6-v2", "1")


def test_vectors_match_sentence_transformers_in_input_order(embedder: SentenceEmbedder) -> None:
    # Mixed lengths in no order, more than one group, a text past the model's 256 tokens, padding spaces.
    texts = [("word " * (i % 23 + 1)).strip() + f" number {i}" for i in range(70)]
    texts += ["lorem ipsum " * 400, "  leading and trailing spaces  ", "Ünïcödé ✓", "a"]
    ours = embedder.encode(texts)
    reference = embedder.model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    assert ours.shape == (len(texts), embedder.dimension)
    assert np.abs(ours - reference).max() < 1e-5
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_each_text_gets_the_vector_it_gets_alone(embedder: SentenceEmbedder) -> None:
    texts = ["a short one", "a considerably longer sentence about the weather in the mountains today", "mid length text"]
    together = embedder.encode(texts)
    for text, vector in zip(texts, together):
        assert np.abs(embedder.encode([text])[0] - vector).max() < 1e-5


def test_no_texts_no_vectors(embedder: SentenceEmbedder) -> None:
    assert embedder.encode([]).shape == (0, embedder.dimension)
