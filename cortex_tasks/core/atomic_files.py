"""Replacing a file whole: a reader in another process sees the old file or the new one, never half of one.

The new content goes to a hidden temporary file in the same folder (so the rename stays on one file
system), which then takes the file's place in one `os.replace`.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def replace_file(path: Path, payload: bytes, durable: bool = False) -> None:
    """Write `payload` to `path` atomically; `durable`: on disk before the rename (fsync), so that a
    machine crash leaves the old content or the new, not an empty file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
