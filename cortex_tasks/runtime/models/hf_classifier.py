"""A user's Hugging Face sequence-classification folder (DistilBERT, BERT, RoBERTa ...) as a classify model.

The folder (found by `user_models`) holds config.json, weights and tokenizer files, as written by
`save_pretrained`. Nothing is downloaded and no code from the folder is run (`trust_remote_code` stays
off): only architectures that ship with transformers load.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cortex_tasks.core.catalogue.user_models import find_user_model
from cortex_tasks.runtime.models.base import ModelInfo, device_name
from cortex_tasks.runtime.models.classifier import multi_label_param, shape_scores, texts_of

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BATCH_SIZE = 32
# Longer inputs are truncated; 512 tokens is the position limit of BERT-family encoders.
MAX_TOKENS = 512


class HFSequenceClassifier:
    def __init__(self, name: str, version: str) -> None:
        found = find_user_model(name)
        if found is None:
            raise FileNotFoundError(f"no model folder named {name!r} in the models directory")
        self._load(found.path, name, version, {"architecture": found.architecture})

    @classmethod
    def from_folder(cls, path: Path, name: str, version: str,
                    card: dict[str, Any] | None = None) -> HFSequenceClassifier:
        """A backend for any save_pretrained folder (a registry artifact, say), not only a user's."""
        backend = cls.__new__(cls)
        backend._load(path, name, version, card or {})
        return backend

    def _load(self, path: Path, name: str, version: str, card: dict[str, Any]) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path = path
        device = device_name()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)  # nosec B615 - a local folder, local_files_only
        self.model = AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True)  # nosec B615 - a local folder, local_files_only
        self.model.to(torch.device(device)).eval()
        config = self.model.config
        self.labels = tuple(str(config.id2label[i]) for i in range(config.num_labels))
        # A model fine-tuned for multi-label answers with independent scores unless told otherwise.
        self.default_multi_label = config.problem_type == "multi_label_classification"
        limits = [MAX_TOKENS, getattr(config, "max_position_embeddings", None), self.tokenizer.model_max_length]
        self.max_tokens = min(int(limit) for limit in limits if isinstance(limit, int) and limit > 0)
        self.card = {**card, "labels": list(self.labels)}
        self.info = ModelInfo(name=name, version=version, task="classify", device=device,
                              max_input_chars=10_000, max_batch_size=BATCH_SIZE)

    def predict(self, inputs: list[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        import torch

        multi_label = multi_label_param(params, self.default_multi_label)
        texts = texts_of(inputs)
        outputs: list[dict[str, Any]] = []
        for start in range(0, len(texts), BATCH_SIZE):
            encoded = self.tokenizer(texts[start:start + BATCH_SIZE], padding=True, truncation=True,
                                     max_length=self.max_tokens, return_tensors="pt")
            # Some tokenizers emit token_type_ids that DistilBERT-style models do not accept.
            accepted = {key: value.to(self.model.device) for key, value in encoded.items()
                        if key in ("input_ids", "attention_mask", "token_type_ids")
                        and (key != "token_type_ids" or self._accepts_token_types())}
            with torch.inference_mode():
                logits = self.model(**accepted).logits.float()
            scores = torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)
            outputs.extend(shape_scores(self.labels, scores.cpu().numpy(), multi_label))
        return outputs

    def _accepts_token_types(self) -> bool:
        import inspect

        return "token_type_ids" in inspect.signature(self.model.forward).parameters
