"""Catalogue entries for models trained by Cortex and kept in the registry: `model=name@version` (or
`name@production|canary|staging|latest`) in a request. The entry's loader names the worker backend that
serves the version's framework; the gateway resolves references here without loading anything.
A numbered version never changes, so its entry is cached for the life of the process; a stage selector
is cached for a few seconds, so a promotion is seen quickly.

Registered models belong to a tenant: a reference is resolved within the tenant in scope, and the entry's
name is the tenant-qualified reference (`<tenant>/<name>@<version>`, registry/references.py), which is
what travels to the worker and keys every shared table. A qualified reference of another tenant names
nothing (None: to the caller, an unknown model).
"""
from __future__ import annotations

import threading
import time
from typing import Any

from cortex_tasks.core.catalogue.entries import ModelEntry
from cortex_tasks.core.registry import service
from cortex_tasks.core.registry.references import qualify, split_qualified
from cortex_tasks.core.tenancy import current_scope

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
    scope = current_scope()
    if not isinstance(scope, str):
        return None  # registered models are always some tenant's: with no tenant in scope, none is named
    tenant, plain = split_qualified(reference)
    if tenant is not None and tenant != scope:
        return None
    selector = plain.partition("@")[2]
    if not selector:
        return None
    key = qualify(scope, plain)
    now = time.monotonic()
    cached = _entries.get(key)
    if cached is not None and (selector.isdigit() or now - cached[0] < SELECTOR_CACHE_SECONDS):
        return cached[1]
    try:
        record = service.resolve(plain)
    except service.RegistryError:
        return None
    except Exception:  # noqa: BLE001 (the registry is unreachable: an unknown model, not a crash of the caller)
        return None
    loader = FRAMEWORK_LOADERS.get(record.framework)
    entry = None if loader is None else ModelEntry(
        qualify(scope, record.reference), record.task, str(record.version), loader,
        record.description or f"{record.framework} model from the registry", batchable=True)
    with _entries_lock:
        _entries[key] = (now, entry)
        if entry is not None:
            _entries[entry.name] = (now, entry)
    return entry
