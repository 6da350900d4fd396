"""A long-running nlp worker must not grow with every new word it reads: the spaCy models work inside a
memory zone, so the strings a batch adds to the shared vocabulary are freed after it."""
from __future__ import annotations

import uuid

from cortex_tasks.runtime.models.pii import PiiDetector, PiiMasker
from cortex_tasks.runtime.models.spacy_ner import SpacyEntityRecognizer, english_pipeline


def _unseen_texts(count: int) -> list[str]:
    return [f"Mr {uuid.uuid4().hex[:8].title()} wrote to {uuid.uuid4().hex[:6]}@example.com from Paris "
            f"about invoice {uuid.uuid4().hex[:10]}." for _ in range(count)]


def test_ner_keeps_the_vocabulary_size_and_its_answers() -> None:
    model = SpacyEntityRecognizer("spacy-ner", "1")
    strings = english_pipeline().vocab.strings
    model.predict(_unseen_texts(4), {})  # anything a first call adds once (labels, caches)
    before = len(strings)
    outputs = model.predict(_unseen_texts(64), {})
    assert len(strings) == before
    # Entities read inside the zone keep their text and label after it.
    paris = [entity for output in outputs for entity in output["entities"] if entity["text"] == "Paris"]
    assert len(paris) == 64 and {entity["label"] for entity in paris} == {"GPE"}


def test_pii_detection_and_masking_keep_the_vocabulary_size() -> None:
    detector, masker = PiiDetector("pii", "1"), PiiMasker("pii-mask", "1")
    strings = english_pipeline().vocab.strings
    detector.predict(_unseen_texts(4), {})
    masker.predict(_unseen_texts(4), {})
    before = len(strings)
    texts = _unseen_texts(32)
    found = detector.predict(texts, {})
    masked = masker.predict(texts, {})
    assert len(strings) == before
    assert all(any(entity["type"] == "EMAIL" for entity in output["entities"]) for output in found)
    # The default rule for e-mail keeps the first letter and the domain.
    assert all(text.split(" wrote to ")[1].split("@")[0] not in output["text"] for text, output in zip(texts, masked))
