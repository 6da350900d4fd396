"""`cortex up` as a user meets it: embedded services, the gateway, workers, Beat and Flower from one
command; the CLI finds the stack through CORTEX_DATA_DIR; a dead process is restarted; SIGTERM stops all."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests

from cortex_tasks.stack.embedded import free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow
CORTEX = str(Path(sys.executable).with_name("cortex"))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture()
def stack():
    data_dir = Path(tempfile.mkdtemp(prefix="cortex-e2e-"))
    port, flower_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items()
           if key not in ("REDIS_URL", "DATABASE_URL", "CORTEX_ADMIN_KEY", "CORTEX_ARTIFACT_DIR")}
    env["CORTEX_DATA_DIR"] = str(data_dir)
    output = data_dir / "up.out"
    with open(output, "wb") as out:
        process = subprocess.Popen([CORTEX, "up", "--port", str(port), "--flower-port", str(flower_port)],
                                   env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: "Cortex is up." in output.read_text() or process.poll() is not None, 420,
                 "the banner")
        assert process.poll() is None, output.read_text()
        yield {"process": process, "data_dir": data_dir, "env": env, "output": output,
               "url": f"http://127.0.0.1:{port}", "flower": f"http://127.0.0.1:{flower_port}"}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            subprocess.run(["pkill", "-9", "-f", str(data_dir)], check=False)


def test_cortex_up_serves_restarts_and_stops(stack):
    banner = stack["output"].read_text()
    admin_key = re.search(r"admin key: (\S+)", banner).group(1)
    assert stack["url"] in banner and "flower" in banner and "redis://" in banner and "postgresql://" in banner
    url, headers = stack["url"], {"Authorization": f"Bearer {admin_key}"}

    ready = requests.get(f"{url}/ready", timeout=10).json()
    assert ready["status"] == "ready"
    assert {"gpu", "nlp", "training"} <= set(ready["queues_served"])

    response = requests.post(f"{url}/api/v1/predict", headers=headers, timeout=60,
                             json={"task": "embed", "inputs": ["hello from the e2e test"]})
    assert response.status_code == 200, response.text
    assert len(response.json()["outputs"][0]) == 384

    # The CLI finds the running stack through CORTEX_DATA_DIR alone.
    created = subprocess.run([CORTEX, "keys", "create", "--role", "reader"], env=stack["env"],
                             capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    reader_key = created.stdout.strip().splitlines()[-1]
    assert requests.get(f"{url}/api/v1/jobs/{response.json()['job_id']}", timeout=10,
                        headers={"Authorization": f"Bearer {reader_key}"}).status_code == 404
    shown = subprocess.run([CORTEX, "jobs", "show", response.json()["job_id"]], env=stack["env"],
                           capture_output=True, text=True, timeout=60)
    assert json.loads(shown.stdout)["status"] == "succeeded"

    # Flower is there, behind basic auth.
    password = re.search(r"user admin, password (\S+)\)", banner).group(1)
    assert requests.get(stack["flower"], timeout=10).status_code == 401
    assert requests.get(stack["flower"], auth=("admin", password), timeout=10).status_code == 200

    # A process that dies is restarted.
    stack_file = stack["data_dir"] / "stack.json"
    processes = json.loads(stack_file.read_text())["processes"]
    os.killpg(processes["worker-gpu"], signal.SIGKILL)
    wait_for(lambda: json.loads(stack_file.read_text())["processes"]["worker-gpu"] != processes["worker-gpu"],
             60, "the gpu worker to be restarted")
    response = requests.post(f"{url}/api/v1/predict", headers=headers, timeout=60,
                             json={"task": "embed", "inputs": ["after the restart"], "wait": 30})
    assert response.status_code == 200, response.text

    # SIGTERM stops everything.
    processes = json.loads(stack_file.read_text())["processes"]
    stack["process"].send_signal(signal.SIGTERM)
    assert stack["process"].wait(90) == 0
    assert not stack_file.exists()
    assert [name for name, pid in processes.items() if alive(pid)] == []
