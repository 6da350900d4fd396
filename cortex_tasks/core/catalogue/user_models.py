"""Models a user brings as Hugging Face directories under `CORTEX_MODELS_DIR`, found at lookup time.

Each subfolder is one model, named by the folder: `<models dir>/support-tickets/{config.json, weights,
tokenizer files}` serves `"model": "support-tickets"`. The folder is read when a request names it, so a
model copied in while Cortex runs is found without a restart.

Torch-free on purpose: the gateway resolves model names through this module, so it only reads
`config.json` (its `architectures` says which task the model serves) and file metadata.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from cortex_tasks.core.settings import get_settings

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# The architecture's class-name suffix decides the task; anything else in the folder is ignored.
ARCHITECTURE_TASKS: tuple[tuple[str, str], ...] = (("ForSequenceClassification", "classify"),)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")

# A config.json larger than this is not a model config; refusing it keeps a lookup cheap.
MAX_CONFIG_BYTES = 1024 * 1024


@dataclass(frozen=True)
class UserModel:
    name: str
    task: str
    path: Path
    version: str
    architecture: str
    labels: tuple[str, ...]


def models_dir() -> Path:
    return get_settings().user_models_dir


def describe_dir(path: Path) -> UserModel | None:
    """The model in `path`, or None when it is not a complete model directory of a supported kind."""
    if not NAME_PATTERN.match(path.name) or not path.is_dir():
        return None
    config_path = path / "config.json"
    try:
        if config_path.stat().st_size > MAX_CONFIG_BYTES:
            return None
        raw = config_path.read_bytes()
        config = json.loads(raw)
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list):
        return None
    task, architecture = None, ""
    for candidate in architectures:
        for suffix, suffix_task in ARCHITECTURE_TASKS:
            if isinstance(candidate, str) and candidate.endswith(suffix):
                task, architecture = suffix_task, candidate
                break
        if task:
            break
    if task is None:
        return None
    weights = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
    if not weights or not any((path / name).is_file() for name in TOKENIZER_FILES):
        return None
    return UserModel(name=path.name, task=task, path=path, version=content_version(raw, weights),
                     architecture=architecture, labels=config_labels(config))


def content_version(config_bytes: bytes, weights: list[Path]) -> str:
    """A short id that changes when the config or a weight file is replaced, so caches keyed on the
    version never serve a replaced model's answers. Hashing file metadata, not gigabytes of weights."""
    digest = hashlib.sha256(config_bytes)
    for weight in weights:
        stat = weight.stat()
        digest.update(f"{weight.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return "local-" + digest.hexdigest()[:12]


def config_labels(config: dict) -> tuple[str, ...]:
    id2label = config.get("id2label")
    if not isinstance(id2label, dict):
        return ()
    try:
        return tuple(str(id2label[key]) for key in sorted(id2label, key=int))
    except (TypeError, ValueError):
        return ()


def find_user_model(name: str) -> UserModel | None:
    if not NAME_PATTERN.match(name):
        return None  # also keeps "../x" and absolute paths out of the models folder
    return describe_dir(models_dir() / name)


def list_user_models(task: str | None = None) -> list[UserModel]:
    folder = models_dir()
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return []
    found = [model for model in map(describe_dir, children) if model is not None]
    return [model for model in found if task is None or model.task == task]
