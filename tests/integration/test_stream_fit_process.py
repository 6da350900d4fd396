"""The stream worker's fit process (runtime/streams/service.py) runs on idle CPU time, and goes with the
worker, however the worker dies:
a worker SIGKILLed (with `cortex up`, or by the kernel's OOM killer) leaves no fit process and no
multiprocessing resource tracker behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = pytest.mark.slow

A_WORKER = """
import os, sys
from cortex_tasks.runtime.streams import service
service.start_fit_process()
print(service.in_fit_process(os.getpid), flush=True)  # the fit process is up and set up
print(service.in_fit_process(os.sched_getscheduler, 0), flush=True)
sys.stdin.read()
"""


def test_a_sigkilled_worker_takes_its_fit_process_with_it():
    worker = subprocess.Popen([sys.executable, "-c", A_WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        fit_pid = int(worker.stdout.readline())
        # It runs on idle CPU time only: a refit takes no core from the events' scoring.
        assert int(worker.stdout.readline()) == os.SCHED_IDLE
        children = psutil.Process(worker.pid).children(recursive=True)
        assert fit_pid in {child.pid for child in children}
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        deadline = time.monotonic() + 30
        while (left := [child for child in children if _alive(child)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        # The fit process, and the resource tracker that lives as long as it does.
        assert [" ".join(child.cmdline())[:120] for child in left] == []
    finally:
        if worker.poll() is None:
            worker.kill()


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
