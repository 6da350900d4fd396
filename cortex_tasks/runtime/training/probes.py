"""Readiness probes for the frameworks training produces: a promotion switches traffic only after the
artifact loads as serving will load it (cheap checks: no model weights are run here)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cortex_tasks.runtime.models.classifier import EmbeddingHead
from cortex_tasks.runtime.models.forecaster import load_forecaster


def embedding_head(record: Any, path: Path) -> None:
    head = EmbeddingHead.load(path)
    if head.softmax_weights.shape[0] != len(head.labels) or head.ovr_weights.shape != head.softmax_weights.shape:
        raise ValueError("the head's layers do not match its labels")


def transformer_folder(record: Any, path: Path) -> None:
    config = json.loads((path / "config.json").read_text())
    if not any(str(name).endswith("ForSequenceClassification") for name in config.get("architectures", [])):
        raise ValueError("not a sequence-classification model folder")
    if not any((path / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        raise ValueError("no weights in the model folder")


def spacy_pipeline(record: Any, path: Path) -> None:
    meta = json.loads((path / "meta.json").read_text())
    if "ner" not in meta.get("pipeline", []):
        raise ValueError("the pipeline has no entity recogniser")


def forecaster(record: Any, path: Path) -> None:
    load_forecaster(path.read_bytes())


PROBES = {
    "cortex-embedding-head": embedding_head,
    "transformers-sequence-classification": transformer_folder,
    "spacy-ner": spacy_pipeline,
    "prophet": forecaster,
    "statsmodels-arima": forecaster,
}
