"""Processes whose wall clock is minutes off, for tests/integration/test_faults_clock_skew.py and the
`clock_skew` scenario of `python -m bench reliability`.

A skewed process runs with libfaketime preloaded (the `libfaketime` package on PyPI ships the library
built, so no compiler is needed): its wall clock (time.time, datetime.now, every clock_gettime of
CLOCK_REALTIME, in Python and in C alike) is `seconds` off the true time, while its monotonic clock is left
alone, as on a host whose NTP daemon stopped. Redis and PostgreSQL keep the true clock, as in production
where the skewed host is a gateway's or a worker's.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import redis

from tests.support.fault_stack import REPO_ROOT, FaultStack

SKEW_SECONDS = 180  # "a few minutes": past every leeway and grace period of seconds


def skewed_env(seconds: float) -> dict[str, str]:
    """Environment variables that put a process's wall clock `seconds` ahead (negative: behind)."""
    import libfaketime

    library = Path(libfaketime.__file__).parent / "vendor" / "libfaketime" / "src" / "libfaketime.so.1"
    if not library.exists():
        raise RuntimeError(f"libfaketime's library is not where its package puts it: {library}")
    return {"LD_PRELOAD": str(library), "FAKETIME": f"{seconds:+.0f}",
            # Only the wall clock drifts on a real host; timeouts and intervals run on the monotonic one.
            "DONT_FAKE_MONOTONIC": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def measured_skew(stack: FaultStack, env: dict[str, str]) -> float:
    """How far a process started with `env` finds its clock from Redis's: proof that the shift took."""
    code = ("import os, time, redis; client = redis.Redis.from_url(os.environ['REDIS_URL']); "
            "seconds, micros = client.time(); print(time.time() - seconds - micros / 1e6)")
    done = subprocess.run([sys.executable, "-c", code], env={**stack.env, **env}, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"could not read a skewed process's clock:\n{done.stderr[-3000:]}")
    return float(done.stdout.strip())


def run_skewed(stack: FaultStack, code: str, seconds: float, timeout: float = 120) -> str:
    """FaultStack.run with the process's clock `seconds` off: a publisher on a skewed host."""
    done = subprocess.run([sys.executable, "-c", code], env={**stack.env, **skewed_env(seconds)}, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"skewed command failed:\n{done.stderr[-3000:]}")
    return done.stdout


class SkewedGateway:
    """A second gunicorn gateway on the stack's services, on a port of its own, with its clock shifted.
    `view` is the stack as seen through this gateway (FaultStack.call and wait_job go to it)."""

    def __init__(self, stack: FaultStack, seconds: float, workers: int = 1, threads: int = 16) -> None:
        from cortex_tasks.stack.embedded import free_port
        from gunicorn_conf import command

        self.port = free_port()
        self.view = copy.copy(stack)
        self.view.url = f"http://127.0.0.1:{self.port}"
        log = stack.folder / f"gateway-skewed-{self.port}.log"
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(command(f"127.0.0.1:{self.port}", workers, threads), stdout=out,
                                            stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True,
                                            env={**stack.env, **skewed_env(seconds)})
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.view.call("GET", "/health", key=None, timeout=2).status == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the skewed gateway did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.3)

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(10)


def redis_time(stack: FaultStack) -> float:
    seconds, micros = redis.Redis.from_url(stack.env["REDIS_URL"]).time()
    return seconds + micros / 1e6
