"""Fine-tuning a DistilBERT-architecture sequence classifier.

The starting point is a local Hugging Face folder (`params.base_model`: a folder name in the models
directory, CORTEX_MODELS_DIR, like user models), or, with `params.init`, a small DistilBERT initialised
here with a WordPiece vocabulary learnt from the training texts (no download anywhere). The rows are
the classifier's ({text, label} or {text, labels}); the held-out split and the validation are the same.
The fine-tuned folder (weights, config with the label names, tokenizer) is the registered artifact.
"""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from cortex_tasks.core.catalogue.user_models import NAME_PATTERN, models_dir
from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.settings import data_dir
from cortex_tasks.core.training.outcome import TrainedModel, param_float, param_int
from cortex_tasks.runtime.training.context import Cancelled, TrainingContext
from cortex_tasks.runtime.training.trainers import classifier

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

FRAMEWORK = "transformers-sequence-classification"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def validate(rows: list[Any], params: dict[str, Any]):
    report, examples = classifier.validate(rows, params)
    if "base_model" not in params and "init" not in params:
        report.error(None, None, "params.base_model (a model folder name) or params.init (a new small model) "
                                 "is required")
    return report, examples


def base_model_dir(name: Any) -> Path:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise JobInputError("invalid_params", "params.base_model is the name of a folder in the models directory")
    folder = models_dir() / name
    if not (folder / "config.json").is_file():
        raise JobInputError("invalid_params", f"no Hugging Face model folder {name!r} in the models directory")
    return folder


def build_tokenizer(texts: list[str], vocab_size: int, max_length: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size,
                                                                   special_tokens=SPECIAL_TOKENS))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=max_length)


def initial_model(params: dict[str, Any], texts: list[str], labels: tuple[str, ...], multi_label: bool):
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    label_maps = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                  "label2id": {label: i for i, label in enumerate(labels)},
                  "problem_type": "multi_label_classification" if multi_label else "single_label_classification"}
    if "base_model" in params:
        folder = base_model_dir(params["base_model"])
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)  # nosec B615 - a local folder, local_files_only
        model = AutoModelForSequenceClassification.from_pretrained(  # nosec B615 - a local folder, local_files_only
            str(folder), local_files_only=True, ignore_mismatched_sizes=True, **label_maps)
        if model.config.model_type != "distilbert":
            raise JobInputError("invalid_params", f"params.base_model is a {model.config.model_type} model; "
                                                  "a DistilBERT-architecture model is expected")
        return tokenizer, model, {"base_model": params["base_model"]}
    spec = params["init"] if isinstance(params["init"], dict) else {}
    dim = param_int(spec, "dim", 64, 8, 768)
    layers = param_int(spec, "layers", 2, 1, 6)
    heads = param_int(spec, "heads", 2, 1, 12)
    vocab_size = param_int(spec, "vocab_size", 2000, 100, 30_000)
    max_length = param_int(spec, "max_length", 128, 16, 512)
    if dim % heads:
        raise JobInputError("invalid_params", "params.init.dim must be a multiple of params.init.heads")
    tokenizer = build_tokenizer(texts, vocab_size, max_length)
    config = DistilBertConfig(vocab_size=len(tokenizer), dim=dim, n_layers=layers, n_heads=heads,
                              hidden_dim=4 * dim, max_position_embeddings=max_length,
                              pad_token_id=tokenizer.pad_token_id, **label_maps)
    return tokenizer, DistilBertForSequenceClassification(config), {"init": {
        "dim": dim, "layers": layers, "heads": heads, "vocab_size": len(tokenizer), "max_length": max_length}}


def train(context: TrainingContext, examples: list[tuple[str, tuple[str, ...]]], params: dict[str, Any]) -> TrainedModel:
    import torch

    epochs = param_int(params, "epochs", 3, 1, 1000)
    batch_size = param_int(params, "batch_size", 16, 1, 512)
    learning_rate = param_float(params, "learning_rate", 5e-5 if "base_model" in params else 1e-3, 1e-7, 1.0)
    fraction = param_float(params, "validation_split", 0.2, 0.05, 0.5)
    seed = param_int(params, "seed", 13, 0, 2**31 - 1)
    max_length = param_int(params, "max_length", 128, 8, 512)
    multi_label = bool(params.get("multi_label", any(len(labels) > 1 for _, labels in examples)))
    labels = tuple(sorted({label for _, row_labels in examples for label in row_labels}))
    targets = np.zeros((len(examples), len(labels)), dtype=np.float32)
    for row, (_, row_labels) in enumerate(examples):
        for label in row_labels:
            targets[row, labels.index(label)] = 1.0
    train_rows, held_rows = classifier.split(examples, fraction, seed)
    texts = [text for text, _ in examples]

    context.phase("preparing")
    torch.manual_seed(seed)
    tokenizer, model, origin = initial_model(params, [texts[i] for i in train_rows], labels, multi_label)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    start_epoch = 1
    resumed = context.resume_state()
    if resumed is not None:
        state = torch.load(io.BytesIO(resumed[1]), weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"]) + 1

    def encode(rows: list[int]) -> dict[str, Any]:
        encoded = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
        return {key: value for key, value in encoded.items() if key in ("input_ids", "attention_mask")}

    def loss_of(logits: Any, rows: list[int]) -> Any:
        gold = torch.from_numpy(targets[rows])
        if multi_label:
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, gold)
        return torch.nn.functional.cross_entropy(logits, gold.argmax(dim=1))

    def held_out_scores() -> tuple[np.ndarray, np.ndarray]:
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(**encode(held_rows[i:i + 64])).logits for i in range(0, len(held_rows), 64)])
        model.train()
        return torch.softmax(logits, dim=1).numpy(), torch.sigmoid(logits).numpy()

    def state_bytes(epoch: int) -> bytes:
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}, buffer)
        return buffer.getvalue()

    context.phase("training", epochs=epochs)
    model.train()
    for epoch in range(start_epoch, epochs + 1):
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = [train_rows[i] for i in torch.randperm(len(train_rows), generator=generator).tolist()]
        total = 0.0
        for start in range(0, len(order), batch_size):
            if context.requested() == "cancel":  # a step can take a while: do not wait for the epoch end
                raise Cancelled()
            rows = order[start:start + batch_size]
            optimizer.zero_grad()
            loss = loss_of(model(**encode(rows)).logits, rows)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        softmax_scores, sigmoid_scores = held_out_scores()
        held = classifier.evaluate(softmax_scores, sigmoid_scores, targets[held_rows], labels, multi_label)
        context.epoch_done(epoch, {"loss": total / max(1, len(order)), "held_out_accuracy": held["accuracy"]})
        if epoch < epochs:
            context.obey(epoch, lambda done=epoch: state_bytes(done))

    context.phase("evaluating")
    softmax_scores, sigmoid_scores = held_out_scores()
    metrics = classifier.evaluate(softmax_scores, sigmoid_scores, targets[held_rows], labels, multi_label)
    metrics["training_rows"] = len(train_rows)
    folder = data_dir() / "training-work" / context.run_id / "model"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return TrainedModel(
        framework=FRAMEWORK, artifact=folder, artifact_filename="model.tar.gz", metrics=metrics,
        parameters={**origin, "labels": list(labels), "multi_label": multi_label, "epochs": epochs,
                    "batch_size": batch_size, "learning_rate": learning_rate, "max_length": max_length,
                    "validation_split": fraction, "seed": seed,
                    "intended_use": f"Classifies texts into {', '.join(labels)}."},
        description=f"DistilBERT sequence classifier fine-tuned for {len(labels)} labels",
        extra={"cleanup": str(folder.parent)},
    )
