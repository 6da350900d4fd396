"""A whole stack of its own for fault injection: Redis, PostgreSQL, a gunicorn gateway and workers, each a
process a test may stop (SIGSTOP), kill (SIGKILL) and start again, without touching the session's services.

Everything listens on the loopback address; every wait has a deadline. Used by tests/integration/
test_faults*.py and by `python -m bench reliability`.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import redis

from cortex_tasks.core.worker_records import READY_KEY_PREFIX
from cortex_tasks.stack.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def _popen(argv: list[str], log: Path, env: dict[str, str], user: str | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                                start_new_session=True, user=user)


def _signal_group(process: subprocess.Popen | None, sig: int) -> None:
    if process is not None and process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass


def _stop(process: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    if process is None or process.poll() is not None:
        return
    _signal_group(process, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
    _signal_group(process, sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait(10)


class Answer:
    """One HTTP answer: status, JSON body (or None), headers and how long it took."""

    def __init__(self, status: int, body: Any, headers: dict[str, str], seconds: float) -> None:
        self.status, self.body, self.headers, self.seconds = status, body, headers, seconds

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.seconds:.2f}s, {str(self.body)[:300]})"


class FaultStack:
    def __init__(self, folder: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.folder = folder or Path(tempfile.mkdtemp(prefix="cortex-faults-"))
        self._own_folder = folder is None
        self.redis_server = EmbeddedRedis(self.folder / "redis", free_port())
        self.postgres = EmbeddedPostgres(self.folder / "postgres", free_port())
        self.redis_process: subprocess.Popen | None = None
        self.postgres_process: subprocess.Popen | None = None
        self.gateway_process: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}
        self.hostnames: dict[str, str] = {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                    "CORTEX_DATA_DIR": str(self.folder / "data"),
                    "CORTEX_ARTIFACT_DIR": str(self.folder / "artifacts"), **(env or {})}
        for name in ("CORTEX_TEST_SERVICES_STARTED", "PROMETHEUS_MULTIPROC_DIR"):
            self.env.pop(name, None)
        self.key = ""

    # --- services ---

    def start_redis(self) -> None:
        self.redis_process = _popen(self.redis_server.argv(), self.folder / "redis.log", self.env)
        self.redis_server.wait_ready()
        self.env["REDIS_URL"] = self.redis_server.url

    def start_postgres(self) -> None:
        process = _popen(self.postgres.argv(), self.folder / "postgres.log", self.env,
                         user=self.postgres.system_user)
        self.postgres_process = process
        self.postgres.wait_ready()
        self.env["DATABASE_URL"] = self.postgres.url

    def postgres_pids(self) -> list[int]:
        """The postmaster and its backends: a stall (SIGSTOP) must reach every one of them."""
        import psutil

        assert self.postgres_process is not None
        root = psutil.Process(self.postgres_process.pid)
        return [root.pid, *(child.pid for child in root.children(recursive=True))]

    def stall_postgres(self) -> None:
        for pid in self.postgres_pids():
            os.kill(pid, signal.SIGSTOP)

    def resume_postgres(self) -> None:
        for pid in self.postgres_pids():
            os.kill(pid, signal.SIGCONT)

    def stop_postgres(self) -> None:
        _stop(self.postgres_process, signal.SIGINT)  # fast shutdown: open connections are closed

    def stall_redis(self) -> None:
        _signal_group(self.redis_process, signal.SIGSTOP)

    def resume_redis(self) -> None:
        _signal_group(self.redis_process, signal.SIGCONT)

    def kill_redis(self) -> None:
        assert self.redis_process is not None
        _signal_group(self.redis_process, signal.SIGKILL)
        self.redis_process.wait(10)

    def restart_redis(self, keep_data: bool = True) -> None:
        """Start Redis again on the same port; with keep_data, from its append-only file."""
        if not keep_data:
            for item in self.redis_server.folder.iterdir():
                if item.name != "valkey.conf":
                    shutil.rmtree(item) if item.is_dir() else item.unlink()
        self.start_redis()

    def run(self, code: str, timeout: float = 120) -> str:
        """Python code run against this stack's services (in a process of its own); its stdout."""
        done = subprocess.run([sys.executable, "-c", code], env=self.env, cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"stack command failed:\n{done.stderr[-3000:]}")
        return done.stdout

    def start_services(self) -> None:
        """Redis and PostgreSQL started, migrated, with the stack's key: what every fault test starts from."""
        self.start_redis()
        self.start_postgres()
        self.migrate_and_key()

    def migrate_and_key(self) -> None:
        self.run("from cortex_tasks.core.storage.migrate import upgrade_to_head; import os; "
                 "upgrade_to_head(os.environ['DATABASE_URL'])", timeout=300)
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        self.run("from pathlib import Path; import os; from cortex_tasks.core.storage.sealing import "
                 "ensure_key_file; ensure_key_file(Path(os.environ['CORTEX_DATA_DIR']))")
        self.key = self.run("from cortex_tasks.core.auth.keys import create_key; "
                            "print(create_key('model_admin', name='faults', tier='unlimited').key)").strip()

    # --- gateway and workers ---

    def start_gateway(self, workers: int = 1, threads: int = 16) -> None:
        from gunicorn_conf import command

        self.gateway_process = _popen(command(f"127.0.0.1:{self.port}", workers, threads),
                                      self.folder / "gateway.log", self.env)
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.call("GET", "/health", key=None, timeout=2).status == 200:
                    return
            except OSError:
                pass
            if self.gateway_process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start:\n{self.log_tail('gateway')}")
            time.sleep(0.3)

    def gateway_children(self) -> list[int]:
        import psutil

        assert self.gateway_process is not None
        return [child.pid for child in psutil.Process(self.gateway_process.pid).children()]

    def start_worker(self, name: str, queues: str, pool: str = "threads", concurrency: int = 4,
                     wait_ready: bool = True, env: dict[str, str] | None = None,
                     extra_args: list[str] | None = None) -> str:
        hostname = f"{name}-{int(time.time() * 1000) % 10**8}@localhost"
        argv = [sys.executable, "-m", "celery", "-A", "cortex_tasks", "worker", "-Q", queues, "-P", pool,
                "-c", str(concurrency), "-n", hostname, "--without-gossip", "--without-mingle", "-l", "INFO", *(extra_args or [])]
        self.workers[name] = _popen(argv, self.folder / f"worker-{name}.log", {**self.env, **(env or {})})
        self.hostnames[name] = hostname
        if wait_ready:
            self.wait_worker_ready(name)
        return hostname

    def wait_worker_ready(self, name: str, timeout: float = 240) -> None:
        client = redis.Redis.from_url(self.env["REDIS_URL"], socket_timeout=2)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.exists(READY_KEY_PREFIX + self.hostnames[name]):
                    return
            except redis.RedisError:
                pass
            if self.workers[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} not ready:\n{self.log_tail('worker-' + name)}")
            time.sleep(0.3)

    def kill_worker(self, name: str) -> None:
        process = self.workers[name]
        _signal_group(process, signal.SIGKILL)
        process.wait(10)

    def log_tail(self, name: str, lines: int = 60) -> str:
        try:
            return "\n".join((self.folder / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # --- HTTP ---

    def call(self, method: str, path: str, body: Any = None, key: str | None | bool = True,
             timeout: float = 30, headers: dict[str, str] | None = None) -> Answer:
        sent = dict(headers or {})
        if key is True:
            key = self.key
        if key:
            sent["Authorization"] = f"Bearer {key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=sent)
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # nosec B310 - loopback
                status, raw, got = response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as error:
            status, raw, got = error.code, error.read(), dict(error.headers)
        seconds = time.monotonic() - started
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return Answer(status, parsed, got, seconds)

    def wait_job(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            answer = self.call("GET", f"/api/v1/jobs/{job_id}", timeout=10)
            if answer.status == 200 and answer.body["status"] in ("succeeded", "failed", "cancelled"):
                return answer.body
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} not finished after {timeout}s: {answer}")
            time.sleep(0.3)

    # --- teardown ---

    def close(self) -> None:
        for process in self.workers.values():
            _stop(process)
        _stop(self.gateway_process)
        _stop(self.postgres_process, signal.SIGINT)
        _stop(self.redis_process)
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)
