"""The kinds of training job: which task the result serves, how its quality is judged, where the trainer
lives. Plain data, importable by the gateway (no torch, spaCy or statsmodels here)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingKind:
    name: str
    task: str  # the inference task the trained model serves
    trainer: str  # "module" exposing validate() and train(); imported in the training worker only
    primary_metric: str
    higher_is_better: bool
    description: str


KINDS: dict[str, TrainingKind] = {kind.name: kind for kind in (
    TrainingKind("classifier", "classify", "cortex_tasks.runtime.training.trainers.classifier", "accuracy", True,
                 "A classification head (softmax and one-vs-rest) on MiniLM sentence embeddings; rows are "
                 "{text, label} or {text, labels: [...]} for multi-label"),
    TrainingKind("transformer", "classify", "cortex_tasks.runtime.training.trainers.transformer", "accuracy", True,
                 "Fine-tuning a DistilBERT-architecture sequence classifier from a local Hugging Face folder "
                 "(params.base_model) or a small model initialised here (params.init)"),
    TrainingKind("ner", "ner", "cortex_tasks.runtime.training.trainers.ner", "f1", True,
                 "spaCy entity recogniser for custom labels; rows are {text, entities: [[start, end, label]]}"),
    TrainingKind("forecast", "forecast", "cortex_tasks.runtime.training.trainers.forecast", "smape", False,
                 "Prophet or ARIMA (params.method) on one series; rows are {ds, y}"),
)}


def kind_names() -> list[str]:
    return sorted(KINDS)
