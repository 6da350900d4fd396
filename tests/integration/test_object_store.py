"""The artifact store, on a real S3-protocol server (moto's, through the official minio client) and on the
local filesystem: round trips, sha256 verification on load, safe names, AES-256-GCM at rest."""
from __future__ import annotations

import base64
import hashlib
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cortex_tasks.core.storage.object_store import (
    ArtifactIntegrityError,
    InvalidObjectName,
    LocalObjectStore,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreUnavailable,
    S3ObjectStore,
    check_object_name,
)
from tests.support.s3_server import S3Endpoint, running_s3_server

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
TRAVERSAL_NAMES = ["../escape", "a/../../b", "/etc/passwd", "models/../../../etc/passwd", "a//b", "./a", "a/./b",
                   "a\\b", "..\\windows", "C:/temp/x", "", ".meta/x", "a/.hidden", "a/b/", "x" * 600, "a\x00b"]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with running_s3_server() as endpoint:
        yield endpoint


def make_store(kind: str, s3: S3Endpoint, tmp_path: Path, key: bytes | None = None) -> ObjectStore:
    if kind == "s3":
        return S3ObjectStore(s3.endpoint, s3.access_key, s3.secret_key, s3.new_bucket_name(), key=key)
    return LocalObjectStore(tmp_path / "artifacts", key=key)


def overwrite_raw(store: ObjectStore, name: str, payload: bytes) -> None:
    """Change the stored bytes behind the store's back, keeping the recorded digest (an attacker or a
    corrupted disk), the way each backend actually holds them."""
    if isinstance(store, S3ObjectStore):
        _, meta = store._read(name)
        store.client.put_object(store.bucket, name, io.BytesIO(payload), len(payload), metadata=meta)
    else:
        (store.root / name).write_bytes(payload)


def copy_raw(store: ObjectStore, source: str, target: str) -> None:
    """Copy an object's stored bytes and recorded digest to another name, bypassing the store."""
    if isinstance(store, S3ObjectStore):
        payload, meta = store._read(source)
        store.client.put_object(store.bucket, target, io.BytesIO(payload), len(payload), metadata=meta)
    else:
        for base, suffix in ((store.root, ""), (store.root / ".meta", ".json")):
            (base / (target + suffix)).parent.mkdir(parents=True, exist_ok=True)
            (base / (target + suffix)).write_bytes((base / (source + suffix)).read_bytes())


def raw_bytes(store: ObjectStore, name: str) -> bytes:
    if isinstance(store, S3ObjectStore):
        response = store.client.get_object(store.bucket, name)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()
    return (store.root / name).read_bytes()


@pytest.mark.parametrize("kind", ["s3", "local"])
@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "encrypted"])
def test_round_trip_with_digest_and_listing(kind, key, s3, tmp_path):
    store = make_store(kind, s3, tmp_path, key)
    content = os.urandom(300_000)
    stored = store.put("models/intent/1/model.bin", content)
    assert stored.sha256 == hashlib.sha256(content).hexdigest()
    assert stored.size == len(content) and stored.encrypted is (key is not None)
    assert stored.uri.startswith("s3://" if kind == "s3" else "file://")
    assert store.get("models/intent/1/model.bin") == content
    assert store.get("models/intent/1/model.bin", expected_sha256=stored.sha256) == content
    assert store.stat("models/intent/1/model.bin") == stored
    store.put("models/intent/2/model.bin", b"second")
    store.put("datasets/x.parquet", b"rows")
    assert store.list("models/") == ["models/intent/1/model.bin", "models/intent/2/model.bin"]
    assert store.exists("datasets/x.parquet")
    assert store.delete("datasets/x.parquet") is True
    assert store.delete("datasets/x.parquet") is False
    assert not store.exists("datasets/x.parquet")
    with pytest.raises(ObjectNotFound):
        store.get("datasets/x.parquet")


@pytest.mark.parametrize("kind", ["s3", "local"])
def test_objects_tell_when_they_were_last_written(kind, s3, tmp_path):
    store = make_store(kind, s3, tmp_path, None)
    store.put("media/a", b"a")
    store.put("media/b/c", b"c")
    store.put("other/d", b"d")
    now = time.time()
    assert abs(store.modified_at("media/a") - now) < 120  # the server's clock is this machine's
    assert store.modified_at("media/missing") is None
    assert store.modified_before("media/", now + 60) == ["media/a", "media/b/c"]
    assert store.modified_before("media/", now - 3600) == []


@pytest.mark.parametrize("kind", ["s3", "local"])
@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "encrypted"])
def test_files_stream_in_and_out_verified(kind, key, s3, tmp_path):
    store = make_store(kind, s3, tmp_path, key)
    source = tmp_path / "weights.safetensors"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    stored = store.put_file("models/big/1/weights.safetensors", source)
    target = tmp_path / "download" / "weights.safetensors"
    fetched = store.get_file("models/big/1/weights.safetensors", target, expected_sha256=stored.sha256)
    assert target.read_bytes() == source.read_bytes()
    assert fetched.sha256 == stored.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["s3", "local"])
def test_tampered_artifact_is_rejected(kind, s3, tmp_path):
    store = make_store(kind, s3, tmp_path)
    stored = store.put("models/m/1/model.bin", b"the real weights" * 100)
    overwrite_raw(store, "models/m/1/model.bin", b"evil weights!!!!" * 100)
    with pytest.raises(ArtifactIntegrityError) as caught:
        store.get("models/m/1/model.bin")
    assert caught.value.code == "artifact_checksum_mismatch"
    with pytest.raises(ArtifactIntegrityError):
        store.get_file("models/m/1/model.bin", tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()  # nothing unverified is left where a loader would find it
    # Replacing the object *with* a matching stored digest (a full re-upload) is still caught by the
    # digest the registry recorded independently.
    store.put("models/m/1/model.bin", b"evil weights, re-uploaded")
    with pytest.raises(ArtifactIntegrityError):
        store.get("models/m/1/model.bin", expected_sha256=stored.sha256)


@pytest.mark.parametrize("kind", ["s3", "local"])
def test_traversal_and_absolute_names_are_rejected(kind, s3, tmp_path):
    store = make_store(kind, s3, tmp_path)
    for name in TRAVERSAL_NAMES:
        for operation in (lambda n: store.put(n, b"x"), store.get, store.stat, store.delete):
            with pytest.raises(InvalidObjectName):
                operation(name)
    assert store.list() == []
    if kind == "local":
        assert not (tmp_path / "escape").exists()


def test_valid_names_are_accepted():
    for name in ["model.bin", "models/intent-classifier/12/model.safetensors", "batch/2024=01/part_0.parquet",
                 "_tmp/x..y"]:
        assert check_object_name(name) == name


def test_local_store_refuses_a_symlink_out_of_its_root(tmp_path):
    store = LocalObjectStore(tmp_path / "root")
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "root" / "linked").symlink_to(tmp_path / "outside")
    with pytest.raises(InvalidObjectName):
        store.put("linked/payload.bin", b"x")
    assert list((tmp_path / "outside").iterdir()) == []


@pytest.mark.parametrize("kind", ["s3", "local"])
def test_encryption_at_rest(kind, s3, tmp_path):
    store = make_store(kind, s3, tmp_path, KEY)
    secret = b"proprietary weights " * 50
    store.put("models/secret/1/model.bin", secret)
    at_rest = raw_bytes(store, "models/secret/1/model.bin")
    assert secret[:20] not in at_rest and len(at_rest) == len(secret) + 8 + 12 + 16  # magic, nonce, tag
    assert store.get("models/secret/1/model.bin") == secret
    # Another key, no key, a flipped bit, a ciphertext moved to another name: all refused.
    bucket_or_root = {"bucket": store.bucket} if isinstance(store, S3ObjectStore) else {}
    if isinstance(store, S3ObjectStore):
        wrong = S3ObjectStore(s3.endpoint, s3.access_key, s3.secret_key, key=OTHER_KEY, **bucket_or_root)
        keyless = S3ObjectStore(s3.endpoint, s3.access_key, s3.secret_key, **bucket_or_root)
    else:
        wrong, keyless = LocalObjectStore(store.root, OTHER_KEY), LocalObjectStore(store.root)
    with pytest.raises(ArtifactIntegrityError) as caught:
        wrong.get("models/secret/1/model.bin")
    assert caught.value.code == "artifact_tampered"
    with pytest.raises(ObjectStoreError) as caught:
        keyless.get("models/secret/1/model.bin")
    assert caught.value.code == "artifact_key_missing"
    flipped = bytearray(at_rest)
    flipped[40] ^= 0x01
    overwrite_raw(store, "models/secret/1/model.bin", bytes(flipped))
    with pytest.raises(ArtifactIntegrityError):
        store.get("models/secret/1/model.bin")
    store.put("models/secret/2/model.bin", secret)
    copy_raw(store, "models/secret/2/model.bin", "models/secret/3/model.bin")
    assert store.stat("models/secret/3/model.bin").sha256 == hashlib.sha256(secret).hexdigest()
    with pytest.raises(ArtifactIntegrityError) as caught:
        store.get("models/secret/3/model.bin")  # the name is bound into the ciphertext
    assert caught.value.code == "artifact_tampered"
    # An encrypted artifact swapped for plaintext (with the right digest) is refused too.
    store.put("models/secret/4/model.bin", secret)
    overwrite_raw(store, "models/secret/4/model.bin", secret)
    with pytest.raises(ArtifactIntegrityError):
        store.get("models/secret/4/model.bin")


def test_artifact_key_setting_is_checked(monkeypatch):
    from cortex_tasks.core.settings import get_settings, reset_settings_cache

    try:
        monkeypatch.setenv("CORTEX_ARTIFACT_KEY", base64.b64encode(KEY).decode())
        reset_settings_cache()
        assert get_settings().artifact_key == KEY
        assert "artifact_key" not in repr(get_settings())  # secrets stay out of logs
        for bad in ("not base64!", base64.b64encode(b"short").decode()):
            monkeypatch.setenv("CORTEX_ARTIFACT_KEY", bad)
            reset_settings_cache()
            with pytest.raises(ValueError, match="CORTEX_ARTIFACT_KEY"):
                get_settings()
    finally:
        monkeypatch.delenv("CORTEX_ARTIFACT_KEY")
        reset_settings_cache()


def test_unreachable_s3_is_a_transient_error(tmp_path):
    from cortex_tasks.stack.embedded import free_port

    store = S3ObjectStore(f"127.0.0.1:{free_port()}", "k", "s", "nothing-here")
    store.client._http.connection_pool_kw["retries"] = 0  # fail fast in the test
    store.client._http.clear()
    with pytest.raises(ObjectStoreUnavailable) as caught:
        store.get("models/x/1/model.bin")
    assert isinstance(caught.value, ConnectionError)  # so task retry policies retry it


def test_resolve_uri_stays_inside_the_artifact_directory(tmp_path):
    from cortex_tasks.core.settings import get_settings
    from cortex_tasks.core.storage.object_store import get_object_store, resolve_uri

    store = get_object_store()
    stored = store.put("models/uri-test/1/model.bin", b"uri")
    resolved, name = resolve_uri(stored.uri)
    assert name == "models/uri-test/1/model.bin" and resolved.get(name) == b"uri"
    assert stored.uri.startswith(Path(get_settings().artifact_dir).resolve().as_uri())
    for uri in ("file:///etc/passwd", (Path(get_settings().artifact_dir) / ".." / "x").as_uri(), "http://x/y",
                "s3://bucket/../x"):
        with pytest.raises(ObjectStoreError):
            resolve_uri(uri)
