"""Audio inputs of `transcribe`, from the request to the worker, the way images travel (core/images/intake.py).

A client gives a recording as base64 in JSON (`{"audio": "<base64>", "filename"?: "talk.mp3"}`) or as a file of
a multipart upload. The gateway checks it before anything is queued: at most `audio_max_bytes` bytes (25 MB,
OpenAI's own limit for one transcription) and a container the speech API reads, recognised by its first bytes
(WAV, FLAC, OGG/Opus, MP3, MP4/M4A, WebM); decoding it is the API's work, and Cortex holds no decoder. It is
stored under its hash (`tenants/<tenant>/audio/<sha256>`) and travels as `{"audio_sha256", "audio_object",
"filename"}`; the worker reads the bytes back with their digest checked and sends them to the API.

Plain Python: the gateway imports this module.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any

from cortex_tasks.core.errors import ItemError
from cortex_tasks.core.images.intake import decode_limited
from cortex_tasks.core.media_files import media_prefix, stage_object
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.object_store import ObjectNotFound, get_object_store

INVALID_AUDIO = "invalid_audio"
STAGED_KEYS = frozenset({"audio_sha256", "audio_object", "filename"})
FILENAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._ -]{0,120}$")


def sniff_format(data: bytes) -> str | None:
    """The container of a recording from its first bytes (the extension the speech API expects), or None."""
    head = data[:16]
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    if head[4:8] == b"ftyp":
        return "m4a" if head[8:11] in (b"M4A", b"M4B") else "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    return None


def is_staged(item: Any) -> bool:
    return isinstance(item, dict) and set(item) == STAGED_KEYS


def stage_item(item: Any, tenant: str, where: str, details: dict[str, Any] | None = None) -> dict[str, str]:
    """A client's audio item checked and stored; ItemError naming `where` if it is not a recording."""
    if not isinstance(item, dict) or "audio" not in item or set(item) - {"audio", "filename"}:
        raise ItemError(INVALID_AUDIO, f'{where} must be {{"audio": "<base64>", "filename"?: "<name>"}}', details)
    limit = get_settings().audio_max_bytes
    if not isinstance(item["audio"], str):
        raise ItemError(INVALID_AUDIO, f"{where} audio must be a base64 string", details)
    data = decode_limited(item["audio"], limit, where, details, INVALID_AUDIO)
    if not data:
        raise ItemError(INVALID_AUDIO, f"{where} is empty", details)
    if len(data) > limit:
        raise ItemError(INVALID_AUDIO, f"{where} has {len(data)} bytes; at most {limit} are allowed",
                        {**(details or {}), "max_bytes": limit})
    kind = sniff_format(data)
    if kind is None:
        raise ItemError(INVALID_AUDIO, f"{where} is not a recording the speech API reads (WAV, FLAC, OGG, MP3, "
                        "MP4/M4A or WebM)", details)
    filename = item.get("filename")
    if filename is not None and (not isinstance(filename, str) or not FILENAME.match(filename)):
        raise ItemError(INVALID_AUDIO, f"{where} filename must be a plain file name", details)
    stem = (filename or "audio").rsplit(".", 1)[0] or "audio"
    sha256 = hashlib.sha256(data).hexdigest()
    name = f"{media_prefix(tenant, 'audio')}{sha256}"
    stage_object(get_object_store(), name, data, f"audio/{kind}")
    # The API tells formats by the file name's extension: it is the one the bytes are, whatever was sent.
    return {"audio_sha256": sha256, "audio_object": name, "filename": f"{stem}.{kind}"}


def stage_inputs(inputs: list[Any], tenant: str) -> list[dict[str, str]]:
    return [stage_item(item, tenant, f"inputs[{index}]", {"index": index}) for index, item in enumerate(inputs)]


def load_staged(item: Any) -> tuple[bytes, str]:
    """The bytes and file name of a staged recording (worker side), their digest checked."""
    if not is_staged(item):
        raise ItemError(INVALID_AUDIO, 'the item is not a recording (transcribe takes {"audio": "<base64>"})')
    try:
        return get_object_store().get(item["audio_object"], expected_sha256=item["audio_sha256"]), item["filename"]
    except ObjectNotFound:
        raise ItemError("audio_not_found", "the recording is no longer stored") from None
