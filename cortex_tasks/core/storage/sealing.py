"""Sensitive values at rest: sealed with AES-256-GCM, or not kept at all.

A job is sensitive when its task handles personal data by nature (`pii_detect`, `pii_mask`: the
catalogue's `sensitive` flag) or when its request says `"sensitive": true`. What such a job leaves
behind in PostgreSQL (its params and result, a batch's chunk inputs and outputs) goes through `protect`
before it is written and through `reveal` when it is read back for its owner.

`CORTEX_SENSITIVE_STORAGE` chooses between:
- `encrypt` (the default): sealed under the current data key (`CORTEX_DATA_KEYS`, or the key file
  `cortex up` writes into the data folder). With no key configured anywhere this behaves as `discard`:
  a missing key must never mean "store it in clear".
- `discard`: the value is replaced by a marker saying it was not kept; the caller gets its answer only
  while it waits (synchronous predict, the stream).

A sealed value is a small JSON object stored in the same JSONB column as the clear value it replaces, so
no migration is needed and a reader can tell the two apart: `{"sealed": 1, "kid": "k2", "nonce": b64,
"ct": b64}`. The key id travels with it so that keys can be rotated: the first configured key seals, every
configured key opens. The associated data is where the value lives (`jobs/<id>/result`, ...): a sealed
value copied into another row or column fails to open instead of being served as that row's.
"""
from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.settings import DATA_KEYS_FILE_NAME, get_settings

ENCRYPT, DISCARD = "encrypt", "discard"
NONCE_BYTES = 12  # the size AES-GCM is specified for; random per value (2^32 values per key is far off)
KEY_BYTES = 32  # AES-256
# What a discarded value is replaced by: enough for a reader to say why there is nothing.
DISCARDED: dict[str, Any] = {"discarded": 1, "reason": "sensitive"}


class SealedValueError(CortexError):
    """A sealed value that cannot be opened here (`data_key_unavailable`, `sealed_value_invalid`): a 503
    naming the reason where it reaches an API answer, since configuring the key again fixes it."""

    status = 503


class ValueNotKept(CortexError):
    """The value was discarded when it was written (CORTEX_SENSITIVE_STORAGE=discard or no data key)."""

    status = 410
    code = "sensitive_not_stored"

    def __init__(self, message: str) -> None:
        super().__init__(self.code, message)


def is_sealed(value: Any) -> bool:
    return isinstance(value, dict) and value.get("sealed") == 1 and "kid" in value and "ct" in value


def is_discarded(value: Any) -> bool:
    return isinstance(value, dict) and value.get("discarded") == 1 and value.get("reason") == "sensitive"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@dataclass(frozen=True)
class Sealer:
    """Data keys by id, in the order configured: the first seals, all of them open."""

    keys: dict[str, bytes]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a Sealer needs at least one data key")

    @property
    def current_kid(self) -> str:
        return next(iter(self.keys))

    def seal(self, value: Any, where: str) -> dict[str, Any]:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        kid = self.current_kid
        nonce = secrets.token_bytes(NONCE_BYTES)
        ciphertext = AESGCM(self.keys[kid]).encrypt(nonce, orjson.dumps(value), where.encode())
        return {"sealed": 1, "kid": kid, "nonce": _b64(nonce), "ct": _b64(ciphertext)}

    def open(self, envelope: dict[str, Any], where: str) -> Any:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        kid = envelope["kid"]
        key = self.keys.get(kid)
        if key is None:
            raise SealedValueError(
                "data_key_unavailable",
                f"this value was sealed under data key {kid!r}, which is not configured "
                f"(CORTEX_DATA_KEYS has {sorted(self.keys)}): add it back to read it")
        try:
            plaintext = AESGCM(key).decrypt(base64.b64decode(envelope["nonce"]),
                                            base64.b64decode(envelope["ct"]), where.encode())
        except (InvalidTag, ValueError, KeyError):
            raise SealedValueError(
                "sealed_value_invalid",
                f"the sealed value at {where} failed authenticated decryption: it was modified, moved "
                "from another row, or sealed with a different key under the same id") from None
        return orjson.loads(plaintext)


def current_sealer() -> Sealer | None:
    """The sealer of the configured keys, or None when no data key is configured."""
    keys = get_settings().data_keys
    return Sealer(keys) if keys else None


def storage_mode() -> str:
    """What happens to sensitive values written now: `encrypt` only when a key is there to do it."""
    if get_settings().sensitive_storage == ENCRYPT and get_settings().data_keys:
        return ENCRYPT
    return DISCARD


def protect(value: Any, where: str) -> Any:
    """What a sensitive value becomes at rest: sealed, or the DISCARDED marker. None stays None."""
    if value is None:
        return None
    sealer = current_sealer()
    if sealer is not None and get_settings().sensitive_storage == ENCRYPT:
        return sealer.seal(value, where)
    return dict(DISCARDED)


def reveal(value: Any, where: str) -> Any:
    """A stored value as it was before `protect` (a clear value is returned as it is). Raises
    SealedValueError when it cannot be opened with the keys configured, ValueNotKept when it was discarded."""
    if is_discarded(value):
        raise ValueNotKept(f"the value at {where} was sensitive and not kept")
    if not is_sealed(value):
        return value
    sealer = current_sealer()
    if sealer is None:
        raise SealedValueError("data_key_unavailable",
                               f"this value was sealed under data key {value['kid']!r} and no data key is "
                               "configured (CORTEX_DATA_KEYS)")
    return sealer.open(value, where)


def reseal(value: Any, where: str, sealer: Sealer) -> Any | None:
    """The value sealed under the current key, or None when it needs no change (clear, discarded, or
    already under the current key)."""
    if not is_sealed(value) or value["kid"] == sealer.current_kid:
        return None
    return sealer.seal(sealer.open(value, where), where)


def chunk_inputs_place(job_id: str, chunk_index: int) -> str:
    """Where a batch chunk's inputs are stored: the associated data of their seal."""
    return f"batch_chunks/{job_id}/{chunk_index}/inputs"


def inputs_in_transit(job_id: str) -> str:
    """Where a sensitive prediction's inputs are while its message waits in a queue."""
    return f"messages/{job_id}/inputs"


def seal_in_transit(value: Any, where: str) -> dict[str, Any] | None:
    """A value sealed for the time its message waits in a Redis queue, or None when no key is configured:
    it then travels in clear, since the worker needs it, and the broker deletes the message once it is
    acknowledged. Sealed whatever CORTEX_SENSITIVE_STORAGE says: it is delivery, not storage."""
    sealer = current_sealer()
    return sealer.seal(value, where) if sealer is not None else None


BYTES_MAGIC = b"CXSEAL1"  # sealed objects (batch results): magic, key id length and id, nonce, ciphertext


def protect_bytes(data: bytes, where: str) -> bytes:
    """An object's bytes sealed under the current key. Objects are only written for sensitive jobs when a
    key is there (sensitive batches are refused without one), so there is no discard here."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    sealer = current_sealer()
    if sealer is None:
        raise SealedValueError("data_key_unavailable", "no data key is configured (CORTEX_DATA_KEYS) to seal "
                               f"{where} with")
    kid = sealer.current_kid.encode()
    nonce = secrets.token_bytes(NONCE_BYTES)
    return (BYTES_MAGIC + bytes([len(kid)]) + kid + nonce
            + AESGCM(sealer.keys[sealer.current_kid]).encrypt(nonce, data, where.encode()))


def reveal_bytes(data: bytes, where: str) -> bytes:
    """An object's bytes as written (opened if protect_bytes sealed them)."""
    if not data.startswith(BYTES_MAGIC):
        return data
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    start = len(BYTES_MAGIC) + 1
    kid = data[start:start + data[len(BYTES_MAGIC)]].decode(errors="replace")
    body = data[start + len(kid.encode()):]
    sealer = current_sealer()
    key = sealer.keys.get(kid) if sealer is not None else None
    if key is None:
        raise SealedValueError("data_key_unavailable", f"{where} was sealed under data key {kid!r}, which is "
                               "not configured (CORTEX_DATA_KEYS): add it back to read it")
    try:
        return AESGCM(key).decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], where.encode())
    except InvalidTag:
        raise SealedValueError("sealed_value_invalid",
                               f"{where} failed authenticated decryption: modified or moved") from None


def new_key_line(kid: str) -> str:
    """A `kid:base64` entry of CORTEX_DATA_KEYS holding a fresh random key."""
    return f"{kid}:{_b64(secrets.token_bytes(KEY_BYTES))}"


def ensure_key_file(folder: Path) -> Path:
    """The data folder's key file, created with one fresh key (readable by its owner only) if it is not
    there: `cortex up` calls this, so a local stack seals sensitive values without any configuration.
    Settings read it when CORTEX_DATA_KEYS is unset."""
    path = folder / DATA_KEYS_FILE_NAME
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two processes starting at once must not each write a different key.
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(descriptor, "w") as handle:
        handle.write(new_key_line("k1") + "\n")
    return path
