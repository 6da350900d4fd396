"""Artifact storage behind one interface: S3 (MinIO in production, through the official `minio` client)
or the local filesystem (the embedded default, under `settings.artifact_dir`).

Every object is stored with the sha256 of its content, and every load verifies it: an artifact changed
behind the registry's back is refused, never loaded. Callers that know the digest independently (the
model registry does) pass it as `expected_sha256`, so replacing an object together with its stored
digest is caught too.

With `CORTEX_ARTIFACT_KEY` set, objects are encrypted at rest with AES-256-GCM: a fresh 96-bit nonce per
object and the object's name as associated data, so a ciphertext moved to another name fails to decrypt.
The digest is that of the plaintext, so it names the artifact whatever the key.

Names are relative paths of plain segments (`models/intent/3/model.safetensors`): no absolute paths, no
`.` or `..` segments, no backslashes; the filesystem store also checks that the resolved path stays
under its root.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

from cortex_tasks.core.atomic_files import replace_file
from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.settings import Settings, get_settings

MAX_NAME_CHARS = 512
SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9._=-]{0,254}"
OBJECT_NAME = re.compile(rf"^{SEGMENT}(?:/{SEGMENT})*$")
ENCRYPTED_MAGIC = b"CTXAES1\x00"
NONCE_BYTES = 12
CHUNK_BYTES = 1024 * 1024
# Keys of the metadata stored beside each object (S3 user metadata, or the filesystem sidecar).
META_SHA256, META_SIZE, META_ENCRYPTED = "cortex-sha256", "cortex-size", "cortex-encrypted"


class ObjectStoreError(CortexError):
    status = 422


class InvalidObjectName(ObjectStoreError):
    def __init__(self, name: Any, why: str):
        super().__init__("invalid_object_name", f"invalid object name {str(name)[:100]!r}: {why}")


class ObjectNotFound(ObjectStoreError):
    status = 404

    def __init__(self, name: str):
        super().__init__("object_not_found", f"no object named {name!r}")


class ArtifactIntegrityError(ObjectStoreError):
    """The stored bytes are not the ones that were written: tampered with, truncated or corrupted."""

    status = 409


class ObjectStoreUnavailable(ObjectStoreError, ConnectionError):
    """The storage service could not be reached (a ConnectionError, so task retry policies retry it)."""

    status = 503


def check_object_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidObjectName(name, "must be a non-empty string")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidObjectName(name, f"longer than {MAX_NAME_CHARS} characters")
    if name.startswith("/") or "\\" in name or re.match(r"^[A-Za-z]:", name):
        raise InvalidObjectName(name, "absolute paths are not allowed")
    if any(segment in ("", ".", "..") for segment in name.split("/")):
        raise InvalidObjectName(name, "empty, '.' and '..' path segments are not allowed")
    if not OBJECT_NAME.match(name):
        raise InvalidObjectName(name, "segments are letters, digits, '.', '_', '-', '=' and start with a "
                                      "letter, digit or '_'")
    return name


@dataclass(frozen=True)
class StoredObject:
    name: str
    uri: str
    sha256: str  # of the plaintext
    size: int  # plaintext bytes
    encrypted: bool

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "uri": self.uri, "sha256": self.sha256, "size": self.size,
                "encrypted": self.encrypted}


class ArtifactCipher:
    """AES-256-GCM with the object name as associated data."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if len(key) != 32:
            raise ValueError("AES-256-GCM needs a 32-byte key")
        self._aead = AESGCM(key)

    def encrypt(self, name: str, plaintext: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return ENCRYPTED_MAGIC + nonce + self._aead.encrypt(nonce, plaintext, name.encode())

    def decrypt(self, name: str, payload: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        body = payload[len(ENCRYPTED_MAGIC):]
        nonce, ciphertext = body[:NONCE_BYTES], body[NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, ciphertext, name.encode())
        except InvalidTag:
            raise ArtifactIntegrityError("artifact_tampered",
                                         f"object {name!r} failed authenticated decryption: it was modified, "
                                         "moved from another name, or encrypted with another key") from None


def _sha256_file(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class ObjectStore(ABC):
    """Store and load named objects, checksummed and optionally encrypted. Backends move raw payloads."""

    def __init__(self, key: bytes | None = None) -> None:
        self._cipher = ArtifactCipher(key) if key else None

    @property
    def encrypts(self) -> bool:
        return self._cipher is not None

    # --- backend primitives ---

    @abstractmethod
    def uri(self, name: str) -> str: ...

    @abstractmethod
    def _write(self, name: str, payload: bytes, meta: dict[str, str], content_type: str) -> None: ...

    @abstractmethod
    def _write_file(self, name: str, path: Path, meta: dict[str, str], content_type: str) -> None: ...

    @abstractmethod
    def _read(self, name: str) -> tuple[bytes, dict[str, str]]: ...

    @abstractmethod
    def _read_to_file(self, name: str, destination: Path) -> dict[str, str]: ...

    @abstractmethod
    def _read_meta(self, name: str) -> dict[str, str]: ...

    @abstractmethod
    def _delete(self, name: str) -> bool: ...

    @abstractmethod
    def _list(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def _modified(self, name: str) -> float | None: ...

    @abstractmethod
    def _list_modified(self, prefix: str) -> list[tuple[str, float]]: ...

    # --- the interface ---

    def _stored(self, name: str, meta: dict[str, str]) -> StoredObject:
        return StoredObject(name, self.uri(name), meta.get(META_SHA256, ""), int(meta.get(META_SIZE, 0) or 0),
                            meta.get(META_ENCRYPTED) == "1")

    def put(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> StoredObject:
        check_object_name(name)
        meta = {META_SHA256: hashlib.sha256(data).hexdigest(), META_SIZE: str(len(data)),
                META_ENCRYPTED: "1" if self._cipher else "0"}
        payload = self._cipher.encrypt(name, bytes(data)) if self._cipher else bytes(data)
        self._write(name, payload, meta, content_type)
        return self._stored(name, meta)

    def put_file(self, name: str, path: str | Path, content_type: str = "application/octet-stream") -> StoredObject:
        """Store a file; streamed when unencrypted (encryption here is one-shot, so it reads the file)."""
        check_object_name(name)
        path = Path(path)
        if self._cipher:
            return self.put(name, path.read_bytes(), content_type)
        sha256, size = _sha256_file(path)
        meta = {META_SHA256: sha256, META_SIZE: str(size), META_ENCRYPTED: "0"}
        self._write_file(name, path, meta, content_type)
        return self._stored(name, meta)

    def _open_payload(self, name: str, payload: bytes, meta: dict[str, str]) -> bytes:
        encrypted = payload.startswith(ENCRYPTED_MAGIC)
        if meta.get(META_ENCRYPTED) == "1" and not encrypted:
            raise ArtifactIntegrityError("artifact_tampered",
                                         f"object {name!r} was stored encrypted but is now plaintext")
        if not encrypted:
            return payload
        if self._cipher is None:
            raise ObjectStoreError("artifact_key_missing",
                                   f"object {name!r} is encrypted; set CORTEX_ARTIFACT_KEY to read it")
        return self._cipher.decrypt(name, payload)

    @staticmethod
    def _verify(name: str, actual: str, meta: dict[str, str], expected_sha256: str | None) -> None:
        wanted = expected_sha256 or meta.get(META_SHA256)
        if not wanted:
            raise ArtifactIntegrityError("artifact_unverifiable",
                                         f"object {name!r} has no recorded sha256 and none was given")
        if actual != wanted.lower():
            raise ArtifactIntegrityError("artifact_checksum_mismatch",
                                         f"object {name!r} has sha256 {actual}, expected {wanted}")

    def get(self, name: str, expected_sha256: str | None = None) -> bytes:
        """The object's content, decrypted and verified against `expected_sha256` (or the stored digest)."""
        check_object_name(name)
        payload, meta = self._read(name)
        data = self._open_payload(name, payload, meta)
        self._verify(name, hashlib.sha256(data).hexdigest(), meta, expected_sha256)
        return data

    def get_file(self, name: str, destination: str | Path, expected_sha256: str | None = None) -> StoredObject:
        """Download to `destination`, verified before it appears there (written beside it, then renamed)."""
        check_object_name(name)
        destination = Path(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=".download-")
        os.close(handle)
        try:
            meta = self._read_to_file(name, Path(temporary))
            with open(temporary, "rb") as probe:
                encrypted = probe.read(len(ENCRYPTED_MAGIC)) == ENCRYPTED_MAGIC
            if encrypted or meta.get(META_ENCRYPTED) == "1":
                data = self._open_payload(name, Path(temporary).read_bytes(), meta)
                Path(temporary).write_bytes(data)
            sha256, size = _sha256_file(Path(temporary))
            self._verify(name, sha256, meta, expected_sha256)
            os.replace(temporary, destination)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return StoredObject(name, self.uri(name), sha256, size, meta.get(META_ENCRYPTED) == "1")

    def stat(self, name: str) -> StoredObject:
        return self._stored(name, self._read_meta(check_object_name(name)))

    def exists(self, name: str) -> bool:
        try:
            self.stat(name)
            return True
        except ObjectNotFound:
            return False

    def delete(self, name: str) -> bool:
        return self._delete(check_object_name(name))

    def list(self, prefix: str = "") -> list[str]:
        if prefix:
            check_object_name(prefix.rstrip("/"))
        return sorted(self._list(prefix))

    def modified_at(self, name: str) -> float | None:
        """When the object was last written (seconds since the epoch), or None when there is none."""
        return self._modified(check_object_name(name))

    def modified_before(self, prefix: str, cutoff: float) -> list[str]:
        """The names under `prefix` last written before `cutoff` (seconds since the epoch)."""
        check_object_name(prefix.rstrip("/"))
        return sorted(name for name, modified in self._list_modified(prefix) if modified < cutoff)


class LocalObjectStore(ObjectStore):
    """Objects as files under `root`; each object's digest in a sidecar under `root/.meta/` (object
    names cannot start with '.', so sidecars never collide with objects)."""

    def __init__(self, root: str | Path, key: bytes | None = None) -> None:
        super().__init__(key)
        self.root = Path(root).resolve()
        self._meta_root = self.root / ".meta"

    def uri(self, name: str) -> str:
        return (self.root / name).as_uri()

    def _path(self, name: str, meta: bool = False) -> Path:
        base = self._meta_root if meta else self.root
        path = base / (name + ".json" if meta else name)
        # Belt and braces: even a valid name must not resolve (through a symlink) outside the root.
        resolved = path.parent.resolve() / path.name
        if os.path.commonpath([resolved, self.root]) != str(self.root):
            raise InvalidObjectName(name, "resolves outside the store")
        return path

    def _write(self, name: str, payload: bytes, meta: dict[str, str], content_type: str) -> None:
        replace_file(self._path(name), payload, durable=True)
        replace_file(self._path(name, meta=True), json.dumps(meta).encode(), durable=True)

    def _write_file(self, name: str, path: Path, meta: dict[str, str], content_type: str) -> None:
        target = self._path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".write-")
        os.close(handle)
        try:
            shutil.copyfile(path, temporary)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        replace_file(self._path(name, meta=True), json.dumps(meta).encode(), durable=True)

    def _read_meta(self, name: str) -> dict[str, str]:
        if not self._path(name).is_file():
            raise ObjectNotFound(name)
        try:
            return json.loads(self._path(name, meta=True).read_text())
        except (OSError, ValueError):
            return {}

    def _read(self, name: str) -> tuple[bytes, dict[str, str]]:
        meta = self._read_meta(name)
        return self._path(name).read_bytes(), meta

    def _read_to_file(self, name: str, destination: Path) -> dict[str, str]:
        meta = self._read_meta(name)
        shutil.copyfile(self._path(name), destination)
        return meta

    def _delete(self, name: str) -> bool:
        path = self._path(name)
        if not path.is_file():  # missing, or a folder of other objects' names (`a` of `a/b`): no such object
            return False
        path.unlink(missing_ok=True)
        self._path(name, meta=True).unlink(missing_ok=True)
        return True

    def _list(self, prefix: str) -> list[str]:
        return [name for name, _ in self._list_modified(prefix)]

    def _modified(self, name: str) -> float | None:
        try:
            return self._path(name).stat().st_mtime if self._path(name).is_file() else None
        except FileNotFoundError:
            return None

    def _list_modified(self, prefix: str) -> list[tuple[str, float]]:
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.rglob("*"):
            relative = path.relative_to(self.root).as_posix()
            if path.is_file() and not relative.startswith(".") and "/." not in relative \
                    and relative.startswith(prefix):
                try:
                    found.append((relative, path.stat().st_mtime))
                except FileNotFoundError:  # deleted since it was listed
                    continue
        return found


class S3ObjectStore(ObjectStore):
    """Objects in an S3 bucket through the `minio` client; the digest travels as user metadata and is
    read back in the same response as the content."""

    def __init__(self, endpoint: str, access_key: str | None, secret_key: str | None, bucket: str,
                 secure: bool = False, region: str = "us-east-1", key: bytes | None = None) -> None:
        super().__init__(key)
        from minio import Minio

        parsed = urlparse(endpoint if "://" in endpoint else f"{'https' if secure else 'http'}://{endpoint}")
        self.bucket = bucket
        self.client = Minio(parsed.netloc, access_key=access_key, secret_key=secret_key,
                            secure=parsed.scheme == "https", region=region)
        self._region = region
        self._bucket_ready = False
        self._lock = threading.Lock()

    def uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{quote(name)}"

    def _call(self, operation, *args: Any, **kwargs: Any) -> Any:
        from minio.error import S3Error
        from urllib3.exceptions import HTTPError

        try:
            return operation(*args, **kwargs)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound", "NoSuchBucket"):
                raise ObjectNotFound(kwargs.get("object_name") or (args[1] if len(args) > 1 else "?")) from None
            raise ObjectStoreError("s3_error", f"S3 {exc.code}: {exc.message}") from None
        except HTTPError as exc:
            raise ObjectStoreUnavailable("s3_unavailable", f"S3 endpoint unreachable: {exc}") from None

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        with self._lock:
            if not self._bucket_ready:
                if not self._call(self.client.bucket_exists, self.bucket):
                    from minio.error import S3Error

                    try:
                        self.client.make_bucket(self.bucket, location=self._region)
                    except S3Error as exc:  # created meanwhile by another process
                        if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                            raise
                self._bucket_ready = True

    @staticmethod
    def _meta_from_headers(headers: Any) -> dict[str, str]:
        meta: dict[str, str] = {}
        for key in (META_SHA256, META_SIZE, META_ENCRYPTED):
            value = headers.get(f"x-amz-meta-{key}")
            if value is not None:
                meta[key] = value
        return meta

    def _write(self, name: str, payload: bytes, meta: dict[str, str], content_type: str) -> None:
        self._ensure_bucket()
        self._call(self.client.put_object, self.bucket, name, io.BytesIO(payload), len(payload),
                   content_type=content_type, metadata=meta)

    def _write_file(self, name: str, path: Path, meta: dict[str, str], content_type: str) -> None:
        self._ensure_bucket()
        self._call(self.client.fput_object, self.bucket, name, str(path), content_type=content_type,
                   metadata=meta)

    def _read(self, name: str) -> tuple[bytes, dict[str, str]]:
        response = self._call(self.client.get_object, self.bucket, name)
        try:
            return response.read(), self._meta_from_headers(response.headers)
        finally:
            response.close()
            response.release_conn()

    def _read_to_file(self, name: str, destination: Path) -> dict[str, str]:
        response = self._call(self.client.get_object, self.bucket, name)
        try:
            with open(destination, "wb") as out:
                out.writelines(response.stream(CHUNK_BYTES))
            return self._meta_from_headers(response.headers)
        finally:
            response.close()
            response.release_conn()

    def _read_meta(self, name: str) -> dict[str, str]:
        stat = self._call(self.client.stat_object, self.bucket, name)
        return self._meta_from_headers(stat.metadata)

    def _delete(self, name: str) -> bool:
        try:
            self._read_meta(name)
        except ObjectNotFound:
            return False
        self._call(self.client.remove_object, self.bucket, name)
        return True

    def _list(self, prefix: str) -> list[str]:
        return [name for name, _ in self._list_modified(prefix)]

    def _modified(self, name: str) -> float | None:
        try:
            return self._call(self.client.stat_object, self.bucket, name).last_modified.timestamp()
        except ObjectNotFound:
            return None

    def _list_modified(self, prefix: str) -> list[tuple[str, float]]:
        self._ensure_bucket()
        return [(item.object_name, item.last_modified.timestamp()) for item in
                self._call(self.client.list_objects, self.bucket, prefix=prefix or None, recursive=True)]


def object_store_from_settings(settings: Settings, bucket: str | None = None) -> ObjectStore:
    if settings.uses_s3:
        return S3ObjectStore(settings.s3_endpoint or "", settings.s3_access_key, settings.s3_secret_key,
                             bucket or settings.s3_bucket, settings.s3_secure, settings.s3_region,
                             settings.artifact_key)
    return LocalObjectStore(settings.artifact_dir, settings.artifact_key)


_stores: dict[tuple[int, str | None], ObjectStore] = {}


def get_object_store(bucket: str | None = None) -> ObjectStore:
    """The configured store, one per process (keyed by pid: HTTP pools must not cross a fork)."""
    key = (os.getpid(), bucket)
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = object_store_from_settings(get_settings(), bucket)
    return store


def resolve_uri(uri: str) -> tuple[ObjectStore, str]:
    """The store and object name an artifact URI (`s3://bucket/name` or `file:///...`) points at.
    A file URI must lie under this process's artifact directory."""
    parsed = urlparse(uri)
    settings = get_settings()
    if parsed.scheme == "s3":
        if not settings.uses_s3:
            raise ObjectStoreError("s3_not_configured", f"{uri} is in S3 but no MINIO_ENDPOINT is configured")
        return get_object_store(parsed.netloc), check_object_name(unquote(parsed.path.lstrip("/")))
    if parsed.scheme == "file":
        root = Path(settings.artifact_dir).resolve()
        path = Path(unquote(parsed.path))
        try:
            name = path.relative_to(root).as_posix()
        except ValueError:
            raise InvalidObjectName(uri, f"file URIs must point under {root}") from None
        local = get_object_store() if not settings.uses_s3 else LocalObjectStore(root, settings.artifact_key)
        return local, check_object_name(name)
    raise InvalidObjectName(uri, "artifact URIs are s3://bucket/name or file:///path")
