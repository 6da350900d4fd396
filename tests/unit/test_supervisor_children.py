"""`cortex up`'s supervisor SIGKILLed (nothing of it runs to stop anything): the processes it started die
with it instead of living on with PPID 1 (cortex_tasks/stack/supervisor.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

SUPERVISOR = """
import sys, time
from pathlib import Path
from cortex_tasks.stack.supervisor import Supervisor
supervisor = Supervisor(Path(sys.argv[1]), {"PATH": "/usr/bin:/bin"})
for name in ("first", "second"):
    managed = supervisor.add_and_start(name, [sys.executable, "-c", "import time; time.sleep(300)"])
    print(managed.process.pid, flush=True)
time.sleep(300)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_children_die_with_a_sigkilled_supervisor(tmp_path: Path) -> None:
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(tmp_path)], stdout=subprocess.PIPE,
                                  text=True, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    children: list[int] = []
    try:
        children = [int(supervisor.stdout.readline()) for _ in range(2)]
        assert all(psutil.Process(pid).ppid() == supervisor.pid for pid in children)
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait(10)
        deadline = time.monotonic() + 10
        while alive := [pid for pid in children if psutil.pid_exists(pid)
                        and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]:
            assert time.monotonic() < deadline, f"orphaned: {alive}"
            time.sleep(0.1)
    finally:
        supervisor.kill()
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
