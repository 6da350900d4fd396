"""Cache keys: task + model + version + params + normalized input.

The version is the one that answers the request (after registry routing), so promoting or rolling back a
model moves requests to new keys and an old version's answers are never served for the new one.
An image is keyed on the sha256 of its bytes.
Normalization is deliberately light (Unicode NFKC, whitespace collapsed): it must never merge inputs that
a model would treat differently.
"""
from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any

PREFIX = "cortex:cache:v1:"
_WHITESPACE = re.compile(r"\s+")


def normalize_input(value: Any) -> str:
    # A staged image (core/images/intake.py) is its bytes' hash: the same picture hits whoever sent it and
    # whether it came as base64, an upload or a reference.
    if isinstance(value, dict) and set(value) == {"image_sha256", "image_object"}:
        return f"image:sha256:{value['image_sha256']}"
    if isinstance(value, dict) and set(value) == {"audio_sha256", "audio_object", "filename"}:
        return f"audio:sha256:{value['audio_sha256']}"
    if isinstance(value, str):
        return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", value)).strip()
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def params_fingerprint(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def cache_key(task: str, model: str, version: str, params_json: str, item: Any) -> str:
    digest = hashlib.blake2b(digest_size=20)
    for part in (task, model, version, params_json, normalize_input(item)):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return PREFIX + digest.hexdigest()
