"""Sealing sensitive values (core/storage/sealing.py) and the data-key setting that feeds it."""
from __future__ import annotations

import base64
import os
import stat

import pytest

from cortex_tasks.core.settings import Settings, data_keys_from, reset_settings_cache
from cortex_tasks.core.storage import sealing
from cortex_tasks.core.storage.sealing import (
    DISCARDED,
    SealedValueError,
    Sealer,
    ValueNotKept,
    ensure_key_file,
    is_sealed,
    protect,
    protect_bytes,
    reseal,
    reveal,
    reveal_bytes,
)

K1, K2 = os.urandom(32), os.urandom(32)
VALUE = {"outputs": [{"entities": [{"type": "EMAIL", "text": "jane@example.com"}]}]}


def keys_line(**keys: bytes) -> str:
    return ",".join(f"{kid}:{base64.b64encode(key).decode()}" for kid, key in keys.items())


def test_sealed_value_is_an_envelope_without_the_plaintext():
    envelope = Sealer({"k1": K1}).seal(VALUE, "jobs/a/result")
    assert set(envelope) == {"sealed", "kid", "nonce", "ct"} and envelope["kid"] == "k1"
    assert "jane@example.com" not in str(envelope) and is_sealed(envelope)
    assert Sealer({"k1": K1}).open(envelope, "jobs/a/result") == VALUE
    # A fresh nonce each time: the same value never seals to the same bytes.
    assert Sealer({"k1": K1}).seal(VALUE, "jobs/a/result")["ct"] != envelope["ct"]


def test_an_envelope_opens_only_where_it_was_sealed_and_under_its_key():
    envelope = Sealer({"k1": K1}).seal(VALUE, "jobs/a/result")
    with pytest.raises(SealedValueError) as moved:
        Sealer({"k1": K1}).open(envelope, "jobs/b/result")
    assert moved.value.code == "sealed_value_invalid"
    with pytest.raises(SealedValueError) as other_key:
        Sealer({"k1": K2}).open(envelope, "jobs/a/result")
    assert other_key.value.code == "sealed_value_invalid"
    with pytest.raises(SealedValueError) as gone:
        Sealer({"k2": K2}).open(envelope, "jobs/a/result")
    assert gone.value.code == "data_key_unavailable" and gone.value.status == 503 and "'k1'" in str(gone.value)


def test_rotation_the_first_key_seals_every_key_opens_and_reseal_moves_old_values():
    old = Sealer({"k1": K1}).seal(VALUE, "w")
    rotated = Sealer({"k2": K2, "k1": K1})
    assert rotated.open(old, "w") == VALUE
    assert rotated.seal(VALUE, "w")["kid"] == "k2"
    moved = reseal(old, "w", rotated)
    assert moved is not None and moved["kid"] == "k2" and Sealer({"k2": K2}).open(moved, "w") == VALUE
    assert reseal(moved, "w", rotated) is None and reseal({"clear": 1}, "w", rotated) is None


def test_data_keys_setting_parses_ids_in_order_and_refuses_bad_keys():
    assert list(data_keys_from(keys_line(k2=K2, k1=K1))) == ["k2", "k1"]
    assert data_keys_from(keys_line(k1=K1) + "\n") == {"k1": K1}  # the key file's trailing newline
    assert data_keys_from("") == {}
    for bad, problem in [("k1:" + base64.b64encode(b"short").decode(), "32 bytes"), ("k1:not base64!", "base64"),
                         ("no-separator", "kid:base64"), (keys_line(k1=K1) + "," + keys_line(k1=K2), "twice")]:
        with pytest.raises(ValueError, match=problem):
            data_keys_from(bad)


@pytest.fixture()
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setenv("CORTEX_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CORTEX_DATA_KEYS", raising=False)
    monkeypatch.delenv("CORTEX_SENSITIVE_STORAGE", raising=False)
    reset_settings_cache()

    def configure(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        reset_settings_cache()

    return configure


def test_with_no_key_sensitive_values_are_discarded_not_stored_in_clear(environment):
    assert sealing.storage_mode() == "discard"
    assert protect(VALUE, "w") == DISCARDED and protect(None, "w") is None
    with pytest.raises(ValueNotKept):
        reveal(DISCARDED, "w")
    assert reveal({"plain": 1}, "w") == {"plain": 1}  # rows written before sealing read as they are


def test_encrypt_mode_seals_and_discard_mode_does_not_keep(environment):
    environment(CORTEX_DATA_KEYS=keys_line(k1=K1))
    assert sealing.storage_mode() == "encrypt"
    sealed = protect(VALUE, "w")
    assert sealed["kid"] == "k1" and reveal(sealed, "w") == VALUE
    environment(CORTEX_SENSITIVE_STORAGE="discard")
    assert sealing.storage_mode() == "discard" and protect(VALUE, "w") == DISCARDED
    assert reveal(sealed, "w") == VALUE  # what was sealed before still reads


def test_the_data_folder_key_file_is_private_made_once_and_read_by_settings(environment, tmp_path):
    path = ensure_key_file(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    assert ensure_key_file(tmp_path).read_text() == first  # never replaced: that would lose every sealed value
    environment()
    assert list(Settings().data_keys) == ["k1"] and "data_keys" not in repr(Settings())
    # The variable wins over the file.
    environment(CORTEX_DATA_KEYS=keys_line(k9=K2))
    assert list(Settings().data_keys) == ["k9"]


def test_sealed_objects_open_by_their_magic_and_name(environment):
    environment(CORTEX_DATA_KEYS=keys_line(k1=K1))
    data = b"parquet bytes with jane@example.com"
    sealed = protect_bytes(data, "batches/j/result.parquet")
    assert b"jane@example.com" not in sealed
    assert reveal_bytes(sealed, "batches/j/result.parquet") == data
    assert reveal_bytes(data, "batches/j/result.parquet") == data  # objects of ordinary batches
    with pytest.raises(SealedValueError):
        reveal_bytes(sealed, "batches/other/result.parquet")
