"""The one interface every model backend implements.

A backend is loaded once per worker process, takes a whole batch per call, and says what it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    task: str
    device: str
    max_input_chars: int
    max_batch_size: int


class ModelBackend(Protocol):
    info: ModelInfo

    def predict(self, inputs: list[Any], params: dict[str, Any]) -> list[Any]:
        """One output per input, in order. May raise ItemError only through `predict_items`."""
        ...


def device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
