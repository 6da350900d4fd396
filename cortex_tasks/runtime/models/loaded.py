"""The registry of loaded models in this process: each model is loaded once, on first use, under a lock.

Never called before a fork: prefork children load their own copy after `worker_process_init`.

Keyed by the catalogue name, which for a registered model is tenant-qualified (`<tenant>/<name>@<version>`,
core/registry/references.py): two tenants' `m@1` are two entries. A task acting for one tenant is never
handed another tenant's loaded model, even by a message that names it.
"""
from __future__ import annotations

import importlib
import threading
import time

from cortex_tasks.core.catalogue import find_model
from cortex_tasks.core.registry.references import split_qualified
from cortex_tasks.core.tenancy import current_scope
from cortex_tasks.runtime.metrics.instruments import MODEL_LOAD_SECONDS
from cortex_tasks.runtime.models.base import ModelBackend

_loaded: dict[str, ModelBackend] = {}
# Re-entrant: a backend may load the models it builds on (a head loads MiniLM) while being loaded.
_lock = threading.RLock()


def get_model(name: str) -> ModelBackend:
    owner, _ = split_qualified(name)
    if owner is not None and owner != current_scope():
        raise KeyError(name)
    model = _loaded.get(name)
    if model is not None:
        return model
    with _lock:
        model = _loaded.get(name)
        if model is None:
            entry = find_model(name)  # bundled, or a user's model folder
            if entry is None:
                raise KeyError(name)
            started = time.perf_counter()
            module_name, class_name = entry.loader.split(":")
            backend_class = getattr(importlib.import_module(module_name), class_name)
            model = backend_class(entry.name, entry.version)
            MODEL_LOAD_SECONDS.labels(name).observe(time.perf_counter() - started)
            _loaded[name] = model
    return model


def loaded_model_names() -> list[str]:
    return sorted(_loaded)
