"""Models trained by Cortex and served from the registry: `model=name@version` in a request.

The catalogue entry of a reference (`cortex_tasks.core.catalogue.registered`) names one of the backends
below by the version's framework; each fetches the artifact (verified against the digest recorded at
registration) and serves it through the same interface as the bundled models.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.registry import artifacts, service
from cortex_tasks.core.registry.references import split_qualified
from cortex_tasks.core.tenancy import current_tenant
from cortex_tasks.core.validation.timeseries import check_item, read_params
from cortex_tasks.runtime.models.base import ModelInfo
from cortex_tasks.runtime.models.classifier import EmbeddingHead, multi_label_param, shape_scores, texts_of
from cortex_tasks.runtime.models.forecaster import load_forecaster
from cortex_tasks.runtime.models.hf_classifier import HFSequenceClassifier
from cortex_tasks.runtime.models.loaded import get_model
from cortex_tasks.runtime.models.preprocessing import Prepared
from cortex_tasks.runtime.models.spacy_ner import entities_of, read_labels
from cortex_tasks.runtime.models.timeseries import trained_forecast


def _fetch(reference: str) -> tuple[Any, Path]:
    """The version and its artifact for a catalogue entry's name: the tenant-qualified reference
    (`<tenant>/<name>@<version>`), read within the tenant in scope, which must be that tenant."""
    tenant, plain = split_qualified(reference)
    if tenant is not None and tenant != current_tenant():
        raise KeyError(reference)  # another tenant's model: as unknown as a missing one
    name, _, version = plain.partition("@")
    record = service.get_version(name, int(version))
    return record, artifacts.fetch_artifact(record)


class RegisteredEmbeddingHead:
    """A classification head trained on MiniLM embeddings (training/trainers/classifier.py)."""

    def __init__(self, name: str, version: str) -> None:
        record, path = _fetch(name)
        self.head = EmbeddingHead.load(path)
        self.embedder = get_model(self.head.metadata.get("embedder", "all-MiniLM-L6-v2"))
        self.default_multi_label = bool(self.head.metadata.get("multi_label", False))
        self.card = {"labels": list(self.head.labels), "training_run": self.head.metadata.get("training_run")}
        self.info = ModelInfo(name=record.model, version=str(record.version), task="classify",
                              device=self.embedder.info.device, max_input_chars=10_000, max_batch_size=64)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.head.labels

    def predict(self, inputs: list[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        multi_label = multi_label_param(params, self.default_multi_label)
        vectors = self.embedder.encode(texts_of(inputs))  # type: ignore[attr-defined]
        return shape_scores(self.head.labels, self.head.scores(vectors, multi_label))


class RegisteredSequenceClassifier:
    """A fine-tuned transformer classifier (training/trainers/transformer.py), served like a user's
    Hugging Face folder: the loading and predict code are the same class's."""

    def __new__(cls, name: str, version: str) -> Any:
        record, path = _fetch(name)
        return HFSequenceClassifier.from_folder(path, record.model, str(record.version),
                                                {"registry": record.reference})


class RegisteredEntityRecognizer:
    """A spaCy pipeline trained for custom entity labels (training/trainers/ner.py)."""

    accepts_prepared = True

    def __init__(self, name: str, version: str) -> None:
        import spacy

        record, path = _fetch(name)
        self.nlp = spacy.load(path)
        self.labels: tuple[str, ...] = tuple(sorted(self.nlp.get_pipe("ner").labels))
        self._lock = threading.Lock()  # spaCy does not promise thread safety
        self.info = ModelInfo(name=record.model, version=str(record.version), task="ner", device="cpu",
                              max_input_chars=10_000, max_batch_size=64)

    def predict(self, inputs: list[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        wanted = read_labels(params, self.labels)
        prepared = [item if isinstance(item, Prepared) else Prepared(str(item), str(item)) for item in inputs]
        # A memory zone, as in spacy_ner.pipeline_turn: the vocabulary would otherwise grow with every new word.
        with self._lock, self.nlp.memory_zone():
            docs = self.nlp.pipe([item.text for item in prepared], batch_size=64)
            return [entities_of(doc, item, wanted) for item, doc in zip(prepared, docs)]


class RegisteredForecaster:
    """A Prophet or ARIMA model fitted on one series (training/trainers/forecast.py). It forecasts the
    periods after that series: an input is `[]` (through /predict, task forecast), or a horizon (a
    number of future periods, or {"horizon": n}); `params.horizon`, else the training horizon, is the
    default. Answers have the shape of the bundled forecasters' (models/timeseries.py)."""

    def __init__(self, name: str, version: str) -> None:
        record, path = _fetch(name)
        self.forecaster = load_forecaster(path.read_bytes())
        self.info = ModelInfo(name=record.model, version=str(record.version), task="forecast", device="cpu",
                              max_input_chars=10_000, max_batch_size=16)

    def predict(self, inputs: list[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        options = read_params("forecast", self.info.name, params, trained=True)
        default = options.horizon or self.forecaster.default_horizon
        outputs = []
        for index, item in enumerate(inputs):
            if isinstance(item, list):
                check_item("forecast", options, item)  # only [] : the series it was fitted on
                horizon = default
            else:
                horizon = item.get("horizon", default) if isinstance(item, dict) else (item if item not in ("", None) else default)
            if isinstance(horizon, str) and horizon.strip().isdigit():
                horizon = int(horizon)
            if isinstance(horizon, bool) or not isinstance(horizon, int) or not 1 <= horizon <= 10_000:
                raise JobInputError("invalid_input", f"inputs[{index}]: the horizon must be an integer from 1 to 10000",
                                    {"index": index})
            outputs.append(trained_forecast(self.forecaster, horizon))
        return outputs
