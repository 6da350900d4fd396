"""Registry artifacts in the object store: uploaded at registration, fetched (verified) at load time.

A directory artifact (a Hugging Face model folder, a spaCy pipeline) is stored as one deterministic
tar.gz and unpacked on fetch. Fetched artifacts are cached per process under the data folder by
digest, and the digest is verified again on every fetch: a cached copy changed on disk is not trusted.
"""
from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import tempfile
from pathlib import Path

from cortex_tasks.core.registry.records import RegistryError, VersionRecord
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.object_store import (
    ObjectNotFound,
    ObjectStoreError,
    StoredObject,
    check_object_name,
    get_object_store,
    resolve_uri,
)

ARCHIVE_SUFFIX = ".tar.gz"


def _pack_directory(folder: Path) -> bytes:
    """A reproducible archive: sorted entries, no owners, zero timestamps."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue
            info = archive.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if path.is_file():
                with open(path, "rb") as handle:
                    archive.addfile(info, handle)
            else:
                archive.addfile(info)
    return buffer.getvalue()


def artifact_folder(tenant: str, model: str, version: int) -> str:
    """Where a version's artifact is kept. The tenant is part of the path: two tenants' `m@1` are two
    models and must not overwrite each other's files. (Versions registered before tenants keep the
    `models/<name>/<version>/` URI their row records.)"""
    return f"models/{tenant}/{model}/{version}"


def store_artifact(model: str, version: int, source: bytes | str | Path,
                   filename: str | None = None, *, tenant: str) -> StoredObject:
    store = get_object_store()
    folder = artifact_folder(tenant, model, version)
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = f"{folder}/{filename or 'model.bin'}"
        return store.put(check_object_name(name), bytes(source))
    path = Path(source)
    if path.is_dir():
        name = f"{folder}/{filename or path.name + ARCHIVE_SUFFIX}"
        if not name.endswith(ARCHIVE_SUFFIX):
            name += ARCHIVE_SUFFIX
        return store.put(check_object_name(name), _pack_directory(path), content_type="application/gzip")
    if not path.is_file():
        raise RegistryError("invalid_artifact", f"artifact path {path} is neither a file nor a directory")
    return store.put_file(check_object_name(f"{folder}/{filename or path.name}"), path)


def existing_artifact(uri: str, sha256: str | None) -> StoredObject:
    try:
        store, name = resolve_uri(uri)
        stored = store.stat(name)
    except ObjectNotFound:
        raise RegistryError("artifact_not_found", f"no artifact at {uri}") from None
    except ObjectStoreError as exc:
        raise RegistryError(exc.code, exc.message) from None
    if sha256 and stored.sha256 != sha256.lower():
        raise RegistryError("artifact_checksum_mismatch",
                            f"the artifact at {uri} has sha256 {stored.sha256}, not {sha256}")
    return stored


def artifact_exists(uri: str) -> bool:
    try:
        store, name = resolve_uri(uri)
        return store.exists(name)
    except ObjectStoreError:
        return False


def _cache_root() -> Path:
    return get_settings().data_dir / "artifact-cache"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_artifact(record: VersionRecord, cache_dir: Path | None = None) -> Path:
    """A verified local copy of the version's artifact: the file, or the unpacked directory.

    Raises ArtifactIntegrityError (from the object store) when the stored bytes do not match the
    digest the registry recorded at registration."""
    store, name = resolve_uri(record.artifact_uri)
    folder = (cache_dir or _cache_root()) / record.artifact_sha256
    local = folder / Path(name).name
    if not (local.is_file() and _file_sha256(local) == record.artifact_sha256):
        store.get_file(name, local, expected_sha256=record.artifact_sha256)
    if not local.name.endswith(ARCHIVE_SUFFIX):
        return local
    unpacked, complete = folder / "unpacked", folder / "unpacked.complete"
    if not complete.exists():
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=".unpack-"))
        with tarfile.open(local, "r:gz") as archive:
            archive.extractall(staging, filter="data")  # refuses absolute paths, '..' and links out
        shutil.rmtree(unpacked, ignore_errors=True)
        staging.rename(unpacked)
        complete.touch()
    return unpacked
