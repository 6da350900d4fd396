"""A classification head on MiniLM sentence embeddings, trained epoch by epoch with torch.

The head is the one the inference side serves (models/classifier.py `EmbeddingHead`): a softmax layer
(one label per text) and one-vs-rest sigmoid layers (`params.multi_label` at prediction time), stored
as plain arrays, no pickle. Both layers are trained together on the same embeddings; the held-out split
is stratified by label and never trained on.
"""
from __future__ import annotations

import io
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cortex_tasks.core.training.datasets import (
    ValidationReport,
    check_balance,
    check_text,
    require_mapping_rows,
)
from cortex_tasks.core.training.outcome import TrainedModel, param_float, param_int
from cortex_tasks.runtime.models.classifier import EmbeddingHead
from cortex_tasks.runtime.models.loaded import get_model
from cortex_tasks.runtime.training.context import TrainingContext

EMBEDDER = "all-MiniLM-L6-v2"
FRAMEWORK = "cortex-embedding-head"
MAX_LABEL_CHARS = 100


def validate(rows: list[Any], params: dict[str, Any]) -> tuple[ValidationReport, list[tuple[str, tuple[str, ...]]]]:
    report = ValidationReport(rows=len(rows))
    examples: list[tuple[str, tuple[str, ...]]] = []
    counts: dict[str, int] = {}
    for index in require_mapping_rows(rows, report, ("text",)):
        row = rows[index]
        if not check_text(report, index, row["text"]):
            continue
        raw = row.get("labels", [row["label"]] if "label" in row else None)
        if raw is None:
            report.error(index, "label", "missing required field 'label' (or 'labels' for multi-label rows)")
            continue
        if not isinstance(raw, list) or not raw:
            report.error(index, "labels", "must be a non-empty list of label strings")
            continue
        bad = [label for label in raw if not isinstance(label, str) or not label.strip()
               or len(label) > MAX_LABEL_CHARS]
        if bad:
            report.error(index, "label", f"labels are non-empty strings of at most {MAX_LABEL_CHARS} characters; "
                                         f"got {bad[0]!r}")
            continue
        labels = tuple(sorted(set(raw)))
        examples.append((row["text"], labels))
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
    check_balance(report, counts, param_int(params, "min_examples_per_class", 2, 2, 10_000),
                  param_float(params, "max_imbalance", 20.0, 1.0, 10_000.0))
    texts = [text for text, _ in examples]
    if len(set(texts)) < len(texts):
        report.warnings.append(f"{len(texts) - len(set(texts))} duplicate text(s)")
    report.summary["multi_label"] = any(len(labels) > 1 for _, labels in examples)
    return report, examples


def split(examples: list[tuple[str, tuple[str, ...]]], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified by each example's first label: every class with 2+ examples has one held out."""
    by_label: dict[str, list[int]] = {}
    for index, (_, labels) in enumerate(examples):
        by_label.setdefault(labels[0], []).append(index)
    generator = random.Random(seed)
    train, held_out = [], []
    for label in sorted(by_label):
        members = by_label[label][:]
        generator.shuffle(members)
        count = max(1, round(len(members) * fraction)) if len(members) >= 2 else 0
        held_out += members[:count]
        train += members[count:]
    return sorted(train), sorted(held_out)


def evaluate(softmax_scores: np.ndarray, ovr_scores: np.ndarray, targets: np.ndarray,
             labels: tuple[str, ...], multi_label: bool) -> dict[str, Any]:
    from sklearn.metrics import f1_score

    truth = targets > 0
    top = softmax_scores.argmax(axis=1)
    metrics: dict[str, Any] = {"held_out_rows": len(targets)}
    if multi_label:
        predicted = ovr_scores >= 0.5
        metrics["accuracy"] = float((predicted == truth).all(axis=1).mean())
        metrics["micro_f1"] = float(f1_score(truth, predicted, average="micro", zero_division=0))
        metrics["macro_f1"] = float(f1_score(truth, predicted, average="macro", zero_division=0))
        metrics["top1_in_labels"] = float(truth[np.arange(len(top)), top].mean())
    else:
        gold = truth.argmax(axis=1)
        metrics["accuracy"] = float((top == gold).mean())
        metrics["macro_f1"] = float(f1_score(gold, top, average="macro", labels=range(len(labels)),
                                             zero_division=0))
        per_class = f1_score(gold, top, average=None, labels=range(len(labels)), zero_division=0)
        metrics["f1_per_class"] = {label: round(float(value), 4) for label, value in zip(labels, per_class)}
    return metrics


def train(context: TrainingContext, examples: list[tuple[str, tuple[str, ...]]], params: dict[str, Any]) -> TrainedModel:
    import torch

    epochs = param_int(params, "epochs", 30, 1, 100_000)
    learning_rate = param_float(params, "learning_rate", 0.1, 1e-6, 10.0)
    batch_size = param_int(params, "batch_size", 32, 1, 4096)
    fraction = param_float(params, "validation_split", 0.2, 0.05, 0.5)
    weight_decay = param_float(params, "weight_decay", 1e-4, 0.0, 1.0)
    seed = param_int(params, "seed", 13, 0, 2**31 - 1)
    multi_label = bool(params.get("multi_label", any(len(labels) > 1 for _, labels in examples)))

    labels = tuple(sorted({label for _, row_labels in examples for label in row_labels}))
    index = {label: i for i, label in enumerate(labels)}
    targets = np.zeros((len(examples), len(labels)), dtype=np.float32)
    for row, (_, row_labels) in enumerate(examples):
        for label in row_labels:
            targets[row, index[label]] = 1.0
    train_rows, held_rows = split(examples, fraction, seed)

    context.phase("preparing")
    embedder = get_model(EMBEDDER)
    vectors = np.asarray(embedder.encode([text for text, _ in examples]), dtype=np.float32)  # type: ignore[attr-defined]
    x_train, y_train = torch.from_numpy(vectors[train_rows]), torch.from_numpy(targets[train_rows])
    x_held, y_held = vectors[held_rows], targets[held_rows]

    torch.manual_seed(seed)
    dimension = vectors.shape[1]
    softmax_layer = torch.nn.Linear(dimension, len(labels))
    ovr_layer = torch.nn.Linear(dimension, len(labels))
    parameters = list(softmax_layer.parameters()) + list(ovr_layer.parameters())
    optimizer = torch.optim.Adam(parameters, lr=learning_rate, weight_decay=weight_decay)
    start_epoch = 1
    resumed = context.resume_state()
    if resumed is not None:
        state = torch.load(io.BytesIO(resumed[1]), weights_only=True)
        softmax_layer.load_state_dict(state["softmax"])
        ovr_layer.load_state_dict(state["ovr"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"]) + 1

    def state_bytes(epoch: int) -> bytes:
        buffer = io.BytesIO()
        torch.save({"softmax": softmax_layer.state_dict(), "ovr": ovr_layer.state_dict(),
                    "optimizer": optimizer.state_dict(), "epoch": epoch}, buffer)
        return buffer.getvalue()

    def scores() -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            held = torch.from_numpy(x_held)
            return (torch.softmax(softmax_layer(held), dim=1).numpy(),
                    torch.sigmoid(ovr_layer(held)).numpy())

    # A row with several labels is a soft target spread over them in the softmax layer.
    soft_targets = y_train / y_train.sum(dim=1, keepdim=True)
    context.phase("training", epochs=epochs)
    epoch = start_epoch - 1
    for epoch in range(start_epoch, epochs + 1):
        order = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        total_loss = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            optimizer.zero_grad()
            loss = (torch.nn.functional.cross_entropy(softmax_layer(x_train[batch]), soft_targets[batch])
                    + torch.nn.functional.binary_cross_entropy_with_logits(ovr_layer(x_train[batch]), y_train[batch]))
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
        softmax_scores, ovr_scores = scores()
        held = evaluate(softmax_scores, ovr_scores, y_held, labels, multi_label)
        context.epoch_done(epoch, {"loss": total_loss / max(1, len(train_rows)), "held_out_accuracy": held["accuracy"]})
        if epoch < epochs:
            context.obey(epoch, lambda done=epoch: state_bytes(done))

    context.phase("evaluating")
    softmax_scores, ovr_scores = scores()
    metrics = evaluate(softmax_scores, ovr_scores, y_held, labels, multi_label)
    metrics["training_rows"] = len(train_rows)
    with torch.no_grad():
        head = EmbeddingHead(
            labels=labels,
            softmax_weights=softmax_layer.weight.numpy().astype(np.float64),
            softmax_bias=softmax_layer.bias.numpy().astype(np.float64),
            ovr_weights=ovr_layer.weight.numpy().astype(np.float64),
            ovr_bias=ovr_layer.bias.numpy().astype(np.float64),
            metadata={"labels": list(labels), "embedder": EMBEDDER, "multi_label": multi_label,
                      "training_run": context.run_id},
        )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "head.npz"
        head.save(path)
        artifact = path.read_bytes()
    return TrainedModel(
        framework=FRAMEWORK, artifact=artifact, artifact_filename="head.npz", metrics=metrics,
        parameters={"embedder": EMBEDDER, "labels": list(labels), "multi_label": multi_label, "epochs": epochs,
                    "learning_rate": learning_rate, "batch_size": batch_size, "validation_split": fraction,
                    "weight_decay": weight_decay, "seed": seed,
                    "intended_use": f"Classifies short English texts into {', '.join(labels)}"
                                    f"{' (several labels per text)' if multi_label else ''}."},
        description=f"Classification head on {EMBEDDER} embeddings ({len(labels)} labels"
                    f"{', multi-label' if multi_label else ''}).",
    )
