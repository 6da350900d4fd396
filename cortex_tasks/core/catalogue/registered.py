"""Catalogue entries for models trained by Cortex and kept in the registry: `model=name@version` (or
`name@production|canary|staging|latest`) in a request. The entry's loader names the worker backend that
serves the version's framework; the gateway resolves references here without loading anything.
A numbered version never changes, so its entry is cached for the life of the process; a stage selector
is cached for a few seconds, so a promotion is seen quickly.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from cortex_tasks.core.catalogue.entries import ModelEntry
from cortex_tasks.core.registry import service

MODULE = "cortex_tasks.runtime.models.registry_models"
# registry framework -> backend class
FRAMEWORK_LOADERS: dict[str, str] = {
    "cortex-embedding-head": f"{MODULE}:RegisteredEmbeddingHead",
    "transformers-sequence-classification": f"{MODULE}:RegisteredSequenceClassifier",
    "spacy-ner": f"{MODULE}:RegisteredEntityRecognizer",
    "prophet": f"{MODULE}:RegisteredForecaster",
    "statsmodels-arima": f"{MODULE}:RegisteredForecaster",
}
SELECTOR_CACHE_SECONDS = 5.0

_entries: dict[str, tuple[float, Any]] = {}
_entries_lock = threading.Lock()


def registered_entry(reference: str) -> ModelEntry | None:
    """The catalogue ModelEntry for `name@version` (or `name@production|canary|staging|latest`), or None
    when the reference names no registered version Cortex can serve."""
    selector = reference.partition("@")[2]
    if not selector:
        return None
    now = time.monotonic()
    cached = _entries.get(reference)
    if cached is not None and (selector.isdigit() or now - cached[0] < SELECTOR_CACHE_SECONDS):
        return cached[1]
    try:
        record = service.resolve(reference)
    except service.RegistryError:
        return None
    except Exception:  # noqa: BLE001 (the registry is unreachable: an unknown model, not a crash of the caller)
        return None
    loader = FRAMEWORK_LOADERS.get(record.framework)
    entry = None if loader is None else ModelEntry(
        record.reference, record.task, str(record.version), loader,
        record.description or f"{record.framework} model from the registry", batchable=True)
    with _entries_lock:
        _entries[reference] = (now, entry)
        if entry is not None:
            _entries[record.reference] = (now, entry)
    return entry
