"""Starting real Celery workers (and other processes) for integration tests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

from cortex_tasks.core.worker_records import READY_KEY_PREFIX

REPO_ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """One `celery -A cortex_tasks worker` process; ready once it has announced itself in Redis."""

    def __init__(self, queues: str, pool: str = "threads", concurrency: int = 4,
                 extra_args: list[str] | None = None, env: dict[str, str] | None = None,
                 name: str | None = None, log_dir: Path | None = None) -> None:
        self.hostname = f"{name or 'test'}-{uuid.uuid4().hex[:8]}@localhost"
        self.argv = [sys.executable, "-m", "celery", "-A", "cortex_tasks", "worker", "-Q", queues,
                     "-P", pool, "-c", str(concurrency), "-n", self.hostname, "--without-gossip",
                     "--without-mingle", "-E", "-l", "INFO", *(extra_args or [])]
        # No metrics endpoint unless the test asks for one (a port): workers of many test sessions share
        # this machine, and each kind's default port would collide.
        self.env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "CORTEX_WORKER_METRICS_PORT": "0", **(env or {})}
        folder = log_dir or Path(os.environ["CORTEX_DATA_DIR"]) / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / f"{self.hostname.split('@')[0]}.log"
        self.process: subprocess.Popen | None = None

    def start(self, wait_ready: bool = True, timeout: float = 180.0) -> "WorkerProcess":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, env=self.env, cwd=REPO_ROOT, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 180.0) -> dict:
        client = redis.Redis.from_url(self.env["REDIS_URL"])  # the worker's own Redis, where it announces itself
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = client.get(READY_KEY_PREFIX + self.hostname)
            if raw:
                return json.loads(raw)
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"worker exited early; log:\n{self.log_tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout}s; log:\n{self.log_tail()}")

    def children(self) -> list[int]:
        """PIDs of the pool's child processes (prefork)."""
        assert self.process is not None
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
