"""The embedded Valkey and PostgreSQL require their generated passwords, keep them 0600 and reuse them, and
a folder written by a version without passwords is upgraded on its next start with its data kept."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
from pathlib import Path

import psycopg
import pytest
import redis

from cortex_tasks.stack.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, valkey_server_binary
from tests.support.waiting import wait_for


def start(argv: list[str], log: Path, user: str | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, user=user)


def stop(process: subprocess.Popen, signum: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signum)
    process.wait(30)


def succeeds(action) -> bool:
    try:
        action()
        return True
    except (redis.ConnectionError, psycopg.OperationalError):
        return False


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_valkey_of_an_older_folder_gets_a_password_and_keeps_its_data(tmp_path):
    folder, port = tmp_path / "redis", free_port()
    folder.mkdir()
    # As earlier versions ran it: no password, files as the umask left them.
    old = start([str(valkey_server_binary()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                 "--appendonly", "yes", "--save", ""], tmp_path / "old.log")
    try:
        client = redis.Redis(port=port)
        wait_for(lambda: succeeds(lambda: client.set("queued", "job-1")), 30, "the older Valkey")
    finally:
        stop(old)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)

    server = EmbeddedRedis(folder, port)
    process = start(server.argv(), tmp_path / "new.log")
    try:
        server.wait_ready()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).get("queued")
        assert redis.Redis.from_url(server.url).get("queued") == b"job-1"
        assert server.password not in " ".join(server.argv())  # on no command line
        assert mode(server.password_file) == 0o600
        assert all(mode(path) == (0o700 if path.is_dir() else 0o600) for path in folder.rglob("*"))
        assert EmbeddedRedis(folder, port).password == server.password  # reused
    finally:
        stop(process)


def test_postgres_of_an_older_folder_gets_a_password(tmp_path):
    postgres = EmbeddedPostgres(tmp_path / "postgres", free_port())
    postgres.init()  # initdb as earlier versions ran it: every local connection trusted
    no_password = f"postgresql://cortex@127.0.0.1:{postgres.port}/postgres"
    process = start(postgres.argv(), tmp_path / "pg.log", user=postgres.system_user)
    try:
        # The older folder: no password needed.
        wait_for(lambda: succeeds(lambda: psycopg.connect(no_password, connect_timeout=2).close()), 60,
                 "PostgreSQL to accept a connection without a password")
        postgres.wait_ready()  # the first start of this version
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(no_password, connect_timeout=2)
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(postgres.url.replace(postgres.password, "wrong"), connect_timeout=2)
        with psycopg.connect(postgres.url) as conn:
            assert conn.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'").fetchone()
            # Kept as a SCRAM hash, and the password is required on the socket as well as TCP.
            assert conn.execute("SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid "
                                "WHERE rolname = 'cortex'").fetchone() == (True,)
            assert {row[0] for row in conn.execute("SELECT auth_method FROM pg_hba_file_rules")} == {
                "scram-sha-256"}
        assert mode(postgres.password_file) == 0o600
        assert postgres.password not in " ".join(postgres.argv())
    finally:
        stop(process, signal.SIGINT)
    # Started again: the same password, nothing to upgrade.
    again = EmbeddedPostgres(postgres.folder, postgres.port)
    process = start(again.argv(), tmp_path / "pg.log", user=again.system_user)
    try:
        again.wait_ready()
        assert again.password == postgres.password
    finally:
        stop(process, signal.SIGINT)
