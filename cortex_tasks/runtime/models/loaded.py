"""The registry of loaded models in this process: each model is loaded once, on first use, under a lock.

Never called before a fork: prefork children load their own copy after `worker_process_init`.
"""
from __future__ import annotations

import importlib
import threading

from cortex_tasks.core.catalogue import find_model
from cortex_tasks.runtime.models.base import ModelBackend

_loaded: dict[str, ModelBackend] = {}
# Re-entrant: a backend may load the models it builds on (a head loads MiniLM) while being loaded.
_lock = threading.RLock()


def get_model(name: str) -> ModelBackend:
    model = _loaded.get(name)
    if model is not None:
        return model
    with _lock:
        model = _loaded.get(name)
        if model is None:
            entry = find_model(name)  # bundled, or a user's model folder
            if entry is None:
                raise KeyError(name)
            module_name, class_name = entry.loader.split(":")
            backend_class = getattr(importlib.import_module(module_name), class_name)
            model = backend_class(entry.name, entry.version)
            _loaded[name] = model
    return model


def loaded_model_names() -> list[str]:
    return sorted(_loaded)
