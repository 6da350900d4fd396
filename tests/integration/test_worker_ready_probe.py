"""`cortex worker-ready <kind>` against a real worker started as compose and Kubernetes start it
(`cortex worker <kind>`): not ready before it has loaded its models, ready once it has, and not ready again
after it stopped (it withdraws its record on a warm shutdown). The probe names the worker's host name
here because the test cannot give the worker a machine of its own; in a container both are the container's."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "from cortex_tasks.cli import main; main()"]


def probe(kind: str, hostname: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "worker-ready", kind, "--hostname", hostname], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
                          check=False)


def test_the_probe_follows_a_real_worker_from_start_to_stop(tmp_path: Path):
    hostname = f"probe-{uuid.uuid4().hex[:8]}"
    assert probe("training", hostname).returncode == 1
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CORTEX_WORKER_METRICS_PORT": "0"}
    with open(tmp_path / "worker.log", "wb") as log:
        # Extra arguments go to celery; the last -n wins, so the worker is training@<hostname>.
        worker = subprocess.Popen([*CLI, "worker", "training", "-n", f"training@{hostname}"], cwd=ROOT, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while (found := probe("training", hostname)).returncode != 0:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text(errors="replace")[-4000:]
            assert time.monotonic() < deadline, found.stderr
            time.sleep(1)
        assert f"training@{hostname}: ready, queues training" in found.stdout
        # The same worker is not ready as another kind.
        assert probe("nlp", hostname).returncode == 1
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
    stopped = probe("training", hostname)
    assert stopped.returncode == 1 and "not ready" in stopped.stderr
