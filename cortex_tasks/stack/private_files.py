"""Files only the stack's own user may read: the data folder holds queued inputs (Valkey's append-only
file), the database, logs, keys and the services' passwords, so every file in it is 0600 and every
folder 0700.

New files get these modes from the umask `cortex up` sets before it starts anything (PRIVATE_UMASK,
inherited by every child); `restrict_tree` brings a data folder written by an older version, whose files
were 0644, to the same modes.
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
PRIVATE_UMASK = 0o077


def private_dir(folder: Path) -> Path:
    """Create `folder` (and missing parents) as 0700; an existing one is made 0700."""
    folder.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    folder.chmod(PRIVATE_DIR)
    return folder


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, 0600 from the moment it exists (no window where it is world-readable)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(descriptor, "w") as out:
        os.fchmod(out.fileno(), PRIVATE_FILE)  # an existing file keeps its mode through O_CREAT
        out.write(text)


def read_or_create_secret(path: Path, nbytes: int = 24) -> str:
    """The secret kept in `path`; on first use a new random one is written there (0600). URL-safe, so that
    it goes into a service URL as it is."""
    path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    if path.exists():
        path.chmod(PRIVATE_FILE)
        secret = path.read_text().strip()
        if secret:
            return secret
    secret = secrets.token_urlsafe(nbytes)
    write_private(path, secret + "\n")
    return secret


def restrict_tree(folder: Path) -> None:
    """Folders under `folder` (itself included) 0700, files 0600; links are left alone (they would lead
    outside, and os.walk does not follow them). Owners are kept, so the embedded PostgreSQL's system user
    still owns its files."""
    if not folder.is_dir():
        return
    for root, _folders, files in os.walk(folder):
        os.chmod(root, PRIVATE_DIR)
        for name in files:
            path = os.path.join(root, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode) and stat.S_IMODE(mode) != PRIVATE_FILE:
                os.chmod(path, PRIVATE_FILE)
