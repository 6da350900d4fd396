"""Test services: real Redis and real PostgreSQL+pgvector for the whole session.

REDIS_URL / DATABASE_URL from the environment are used when given (the database must have pgvector);
otherwise an embedded Valkey and an embedded PostgreSQL 16 with pgvector are started in a private
temporary folder and stopped at the end. The environment is set here, before any test module imports
Cortex, because Celery reads its configuration from it.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

_started: list[subprocess.Popen] = []
_folder: Path | None = None


def _start(argv: list[str], log: Path, user: str | None = None,
           stop_signal: int = signal.SIGTERM) -> subprocess.Popen:
    with open(log, "ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   user=user)
    process.stop_signal = stop_signal  # type: ignore[attr-defined]
    _started.append(process)
    return process


def pytest_configure(config) -> None:
    global _folder
    if os.environ.get("CORTEX_TEST_SERVICES_STARTED"):
        return  # a nested interpreter (xdist or a subprocess) reuses the parent's services
    from cortex_tasks.stack.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

    # A short private folder: unix socket paths are limited to ~100 characters, and no other
    # pytest session can delete it from under us (as it could a shared basetemp).
    _folder = Path(tempfile.mkdtemp(prefix="cortex-test-"))
    os.environ["CORTEX_DATA_DIR"] = str(_folder / "data")
    os.environ["CORTEX_ARTIFACT_DIR"] = str(_folder / "artifacts")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["CORTEX_TEST_SERVICES_STARTED"] = "1"
    # The queues the session's shared workers serve (tests/integration/conftest.py): no stream or alert
    # worker runs for the whole session, only in the tests of those features. `cortex up` serves them all.
    os.environ.setdefault("CORTEX_READY_QUEUES", "gpu,nlp,training,batch,maintenance")
    if not os.environ.get("REDIS_URL"):
        redis_server = EmbeddedRedis(_folder / "redis", free_port())
        _start(redis_server.argv(), _folder / "redis.log")
        redis_server.wait_ready()
        os.environ["REDIS_URL"] = redis_server.url
    if not os.environ.get("DATABASE_URL"):
        postgres = EmbeddedPostgres(_folder / "postgres", free_port())
        _start(postgres.argv(), _folder / "postgres.log", user=postgres.system_user,
               stop_signal=signal.SIGINT)
        postgres.wait_ready()
        os.environ["DATABASE_URL"] = postgres.url

    from cortex_tasks.core.settings import reset_settings_cache
    from cortex_tasks.core.storage.migrate import upgrade_to_head
    from cortex_tasks.core.storage.sealing import ensure_key_file

    # The data key `cortex up` generates, so that workers and gateway seal sensitive values as they would.
    ensure_key_file(_folder / "data")
    reset_settings_cache()
    upgrade_to_head(os.environ["DATABASE_URL"])


@pytest.fixture(autouse=True)
def _settings_read_afresh_after_each_test():
    """Settings are cached per process. Torn down after the test's own fixtures (monkeypatch included),
    so that variables a test changed, once undone, are not left cached for the next test."""
    yield
    from cortex_tasks.core.settings import reset_settings_cache

    reset_settings_cache()


def pytest_unconfigure(config) -> None:
    for process in reversed(_started):
        if process.poll() is None:
            os.killpg(process.pid, process.stop_signal)  # type: ignore[attr-defined]
    for process in reversed(_started):
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    if _folder is not None:
        shutil.rmtree(_folder, ignore_errors=True)
