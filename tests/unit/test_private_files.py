"""Files of the data folder are the owner's alone: secrets are made 0600 and reused, an older folder's
0644 files and 0755 folders are brought to 0600/0700, and links are not followed out of the folder."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from cortex_tasks.stack.private_files import read_or_create_secret, restrict_tree, write_private


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_secret_is_made_once_0600_and_then_reused(tmp_path):
    path = tmp_path / "data" / "redis.password"
    first = read_or_create_secret(path)
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert len(first) >= 32 and first.replace("-", "").replace("_", "").isalnum()  # goes into a URL as is
    path.chmod(0o644)  # as an older version or a copy left it
    assert read_or_create_secret(path) == first
    assert mode(path) == 0o600


def test_an_empty_secret_file_gets_a_new_secret(tmp_path):
    path = tmp_path / "flower_password"
    path.write_text("\n")
    assert read_or_create_secret(path, nbytes=12)
    assert mode(path) == 0o600


def test_write_private_narrows_an_existing_file(tmp_path):
    path = tmp_path / "valkey.conf"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, "requirepass x\n")
    assert path.read_text() == "requirepass x\n" and mode(path) == 0o600


def test_restrict_tree_brings_an_older_folder_to_owner_only_modes(tmp_path):
    data = tmp_path / "var"
    (data / "redis" / "appendonlydir").mkdir(parents=True)
    aof = data / "redis" / "appendonlydir" / "appendonly.aof.1.incr.aof"
    aof.write_text("*3\r\n$3\r\nSET\r\n")
    (data / "logs").mkdir()
    (data / "logs" / "gateway.log").write_text("GET /ready\n")
    for path in (data, data / "redis", data / "redis" / "appendonlydir", data / "logs"):
        path.chmod(0o755)
    for path in (aof, data / "logs" / "gateway.log"):
        path.chmod(0o644)
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    outside.chmod(0o644)
    (data / "link").symlink_to(outside)

    restrict_tree(data)

    for root, folders, files in os.walk(data):
        assert mode(Path(root)) == 0o700, root
        for name in files:
            path = Path(root) / name
            if not path.is_symlink():
                assert mode(path) == 0o600, path
    assert mode(outside) == 0o644  # the link was not followed
