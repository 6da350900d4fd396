"""Classification heads on MiniLM sentence embeddings, and the default topic classifier.

A head is two linear layers over the 384-d normalised embedding: a softmax layer (one label per text,
scores sum to 1) and one-vs-rest logistic layers (independent sigmoid score per label, for
`params.multi_label`). Heads are fitted with scikit-learn but stored and applied as plain arrays
(`.npz` plus JSON metadata, no pickle), so a head file is safe to load and cheap to apply.

The default model, `topic-classifier`, is fitted at first load from the dataset shipped in
`cortex_tasks/runtime/data/topics.jsonl` and cached under `<CORTEX_DATA_DIR>/model-cache/topic-classifier/`.
It is fitted on the training split only: a row is held out when `crc32(text) % 5 == 0`, so its
held-out accuracy can be measured honestly by anyone who recomputes that rule.
"""
from __future__ import annotations

import hashlib
import io
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cortex_tasks.core.atomic_files import replace_file
from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.settings import data_dir
from cortex_tasks.runtime.models import postprocessing
from cortex_tasks.runtime.models.base import ModelInfo
from cortex_tasks.runtime.models.loaded import get_model

DATASET_PATH = Path(__file__).resolve().parents[1] / "data" / "topics.jsonl"
EMBEDDER = "all-MiniLM-L6-v2"
HELD_OUT_MODULUS = 5
# Chosen by 5-fold cross-validation on the training split (accuracy peaked at C=10 among 3/10/30/100).
REGULARISATION_C = 10.0
# Bump when the head format or fitting changes, so cached heads are refitted.
HEAD_FORMAT = 1


@dataclass(frozen=True)
class LabelledText:
    text: str
    labels: tuple[str, ...]


def is_held_out(text: str) -> bool:
    return zlib.crc32(text.encode("utf-8")) % HELD_OUT_MODULUS == 0


def load_labelled_rows(path: Path = DATASET_PATH) -> list[LabelledText]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        text, labels = record.get("text"), record.get("labels")
        if not isinstance(text, str) or not text.strip() or not isinstance(labels, list) or not labels:
            raise ValueError(f"{path}:{number}: a row needs a non-empty 'text' and a list of 'labels'")
        rows.append(LabelledText(text, tuple(str(label) for label in labels)))
    return rows


def split_rows(rows: Sequence[LabelledText]) -> tuple[list[LabelledText], list[LabelledText]]:
    """(training rows, held-out rows) by the stable crc32 rule."""
    train = [row for row in rows if not is_held_out(row.text)]
    held_out = [row for row in rows if is_held_out(row.text)]
    return train, held_out


def text_fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


@dataclass(frozen=True)
class EmbeddingHead:
    labels: tuple[str, ...]
    softmax_weights: np.ndarray  # (labels, dim)
    softmax_bias: np.ndarray  # (labels,)
    ovr_weights: np.ndarray  # (labels, dim)
    ovr_bias: np.ndarray  # (labels,)
    metadata: dict[str, Any] = field(default_factory=dict)

    def scores(self, vectors: np.ndarray, multi_label: bool) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float64)
        if multi_label:
            return sigmoid(vectors @ self.ovr_weights.T + self.ovr_bias)
        return softmax(vectors @ self.softmax_weights.T + self.softmax_bias)

    def save(self, path: Path) -> None:
        """Atomically: a reader in another worker process never sees half a file."""
        buffer = io.BytesIO()
        np.savez(buffer, softmax_weights=self.softmax_weights, softmax_bias=self.softmax_bias,
                 ovr_weights=self.ovr_weights, ovr_bias=self.ovr_bias,
                 labels=np.array(json.dumps(list(self.labels))),
                 metadata=np.array(json.dumps(self.metadata, sort_keys=True)))
        replace_file(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> EmbeddingHead:
        with np.load(path, allow_pickle=False) as arrays:
            return cls(labels=tuple(json.loads(str(arrays["labels"]))),
                       softmax_weights=arrays["softmax_weights"], softmax_bias=arrays["softmax_bias"],
                       ovr_weights=arrays["ovr_weights"], ovr_bias=arrays["ovr_bias"],
                       metadata=json.loads(str(arrays["metadata"])))


def fit_head(vectors: np.ndarray, label_sets: Sequence[Sequence[str]], c: float = REGULARISATION_C,
             metadata: dict[str, Any] | None = None) -> EmbeddingHead:
    """Fit both layers. A row with several labels counts once per label in the softmax layer (a soft
    target spread over its labels) and as a positive for each of its labels one-vs-rest."""
    from sklearn.linear_model import LogisticRegression

    vectors = np.asarray(vectors, dtype=np.float64)
    labels = tuple(sorted({label for label_set in label_sets for label in label_set}))
    if len(labels) < 2:
        raise ValueError("a classifier needs at least two labels")
    index = {label: i for i, label in enumerate(labels)}
    rows = [i for i, label_set in enumerate(label_sets) for _ in label_set]
    targets = [index[label] for label_set in label_sets for label in label_set]
    softmax_layer = LogisticRegression(C=c, max_iter=5000).fit(vectors[rows], targets)
    weights, bias = softmax_layer.coef_, softmax_layer.intercept_
    if len(labels) == 2:  # scikit-learn fits one logit for two classes; softmax([0, z]) == sigmoid(z)
        weights = np.vstack([np.zeros_like(weights), weights])
        bias = np.concatenate([[0.0], bias])
    ovr_weights, ovr_bias = [], []
    for label in labels:
        positive = np.array([label in label_set for label_set in label_sets], dtype=int)
        if positive.min() == positive.max():
            raise ValueError(f"label {label!r} needs both positive and negative examples")
        layer = LogisticRegression(C=c, max_iter=5000).fit(vectors, positive)
        ovr_weights.append(layer.coef_[0])
        ovr_bias.append(layer.intercept_[0])
    return EmbeddingHead(labels=labels, softmax_weights=np.asarray(weights, dtype=np.float64),
                         softmax_bias=np.asarray(bias, dtype=np.float64),
                         ovr_weights=np.array(ovr_weights), ovr_bias=np.array(ovr_bias),
                         metadata={"labels": list(labels), "c": c, **(metadata or {})})


def shape_scores(labels: Sequence[str], rows: np.ndarray, multi_label: bool = False) -> list[dict[str, Any]]:
    """One classification output per row of scores, in the shape every classification-like task uses."""
    return [postprocessing.shape_scores(dict(zip(labels, map(float, row))), multi_label=multi_label)
            for row in rows]


def multi_label_param(params: dict[str, Any], default: bool = False) -> bool:
    value = params.get("multi_label", default)
    if not isinstance(value, bool):
        raise JobInputError("invalid_params", "params.multi_label must be true or false")
    return value


def texts_of(inputs: Sequence[Any]) -> list[str]:
    for index, item in enumerate(inputs):
        if not isinstance(item, str):
            raise JobInputError("invalid_input", f"inputs[{index}] must be a string", {"index": index})
    return list(inputs)


def default_head_path(dataset_path: Path = DATASET_PATH) -> Path:
    """Keyed on the dataset's bytes and the head format, so editing the dataset refits the head."""
    digest = hashlib.sha256(dataset_path.read_bytes())
    digest.update(f"{EMBEDDER}:{HEAD_FORMAT}:{REGULARISATION_C}".encode())
    return data_dir() / "model-cache" / "topic-classifier" / f"head-{digest.hexdigest()[:16]}.npz"


def train_default_head(encode, dataset_path: Path = DATASET_PATH) -> EmbeddingHead:
    """Fit the topic head on the training split of the shipped dataset. `encode(texts)` -> vectors."""
    rows = load_labelled_rows(dataset_path)
    train, held_out = split_rows(rows)
    vectors = encode([row.text for row in train])
    return fit_head(vectors, [row.labels for row in train], metadata={
        "dataset": dataset_path.name,
        "dataset_sha256": hashlib.sha256(dataset_path.read_bytes()).hexdigest(),
        "embedder": EMBEDDER,
        "split_rule": f"held out when crc32(utf-8 text) % {HELD_OUT_MODULUS} == 0",
        "training_rows": len(train),
        "held_out_rows": len(held_out),
        # Lets anyone check that no held-out text was used for fitting the head that is served.
        "training_text_sha256_16": sorted(text_fingerprint(row.text) for row in train),
    })


def load_or_train_default_head(encode, dataset_path: Path = DATASET_PATH) -> EmbeddingHead:
    path = default_head_path(dataset_path)
    if path.exists():
        try:
            return EmbeddingHead.load(path)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is refitted below
    head = train_default_head(encode, dataset_path)
    head.save(path)
    return head


class TopicClassifier:
    """The default `classify` model: the topic head over MiniLM embeddings."""

    def __init__(self, name: str, version: str) -> None:
        self.embedder = get_model(EMBEDDER)
        self.head = load_or_train_default_head(self.embedder.encode)  # type: ignore[attr-defined]
        self.card = self.head.metadata
        self.info = ModelInfo(name=name, version=version, task="classify", device=self.embedder.info.device,
                              max_input_chars=10_000, max_batch_size=64)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.head.labels

    def predict(self, inputs: list[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        multi_label = multi_label_param(params)
        vectors = self.embedder.encode(texts_of(inputs))  # type: ignore[attr-defined]
        return shape_scores(self.head.labels, self.head.scores(vectors, multi_label), multi_label)
