"""`cortex up` as a user meets it: embedded services, the gateway, workers, Beat and Flower from one
command; the CLI finds the stack through CORTEX_DATA_DIR; a dead process is restarted; SIGTERM stops all;
a second start reuses the admin key. And what it keeps private: the services need their passwords, every
file under the data folder is its user's alone, no secret is on a command line or in a log."""
from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
import redis
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


def start_up(data_dir: Path, env: dict[str, str], port: int, flower_port: int, output: Path) -> subprocess.Popen:
    # The terminal's output goes outside the data folder (whose files the test walks).
    with open(output, "wb") as out:
        process = subprocess.Popen([CORTEX, "up", "--port", str(port), "--flower-port", str(flower_port)],
                                   env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: "Cortex is up." in output.read_text() or process.poll() is not None, 420, "the banner")
    assert process.poll() is None, output.read_text()
    return process


@pytest.fixture()
def stack():
    folder = Path(tempfile.mkdtemp(prefix="cortex-e2e-"))
    data_dir = folder / "var"
    port, flower_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items()
           if key not in ("REDIS_URL", "DATABASE_URL", "CORTEX_ADMIN_KEY", "CORTEX_ARTIFACT_DIR",
                          "CORTEX_FLOWER_PASSWORD", "FLOWER_PASSWORD")}
    env["CORTEX_DATA_DIR"] = str(data_dir)
    started: list[subprocess.Popen] = []

    def start_again() -> subprocess.Popen:
        started.append(start_up(data_dir, env, port, flower_port, folder / "up2.out"))
        return started[-1]

    try:
        started.append(start_up(data_dir, env, port, flower_port, folder / "up.out"))
        yield {"process": started[-1], "data_dir": data_dir, "env": env, "output": folder / "up.out",
               "output_again": folder / "up2.out", "start_again": start_again,
               "url": f"http://127.0.0.1:{port}", "flower": f"http://127.0.0.1:{flower_port}"}
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                subprocess.run(["pkill", "-9", "-f", str(data_dir)], check=False)


def test_cortex_up_serves_restarts_and_stops(stack):
    banner = stack["output"].read_text()
    admin_key = re.search(r"admin key: (\S+)", banner).group(1)
    assert stack["url"] in banner and "flower" in banner and "redis://" in banner and "postgresql://" in banner
    url, headers = stack["url"], {"Authorization": f"Bearer {admin_key}"}

    # Anonymous: only whether it is ready; with a key, the details.
    assert requests.get(f"{url}/ready", timeout=10).json() == {"status": "ready"}
    ready = requests.get(f"{url}/ready", headers=headers, timeout=10).json()
    assert ready["status"] == "ready"
    assert {"gpu", "nlp", "training"} <= set(ready["queues_served"])

    response = requests.post(f"{url}/api/v1/predict", headers=headers, timeout=60,
                             json={"task": "embed", "inputs": ["hello from the e2e test"]})
    assert response.status_code == 200, response.text
    assert len(response.json()["outputs"][0]) == 384
    check_worker_metrics(stack, banner)

    # The CLI finds the running stack through CORTEX_DATA_DIR alone.
    created = subprocess.run([CORTEX, "keys", "create", "--role", "reader"], env=stack["env"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert created.returncode == 0, created.stderr
    reader_key = created.stdout.strip().splitlines()[-1]
    assert requests.get(f"{url}/api/v1/jobs/{response.json()['job_id']}", timeout=10,
                        headers={"Authorization": f"Bearer {reader_key}"}).status_code == 404
    shown = subprocess.run([CORTEX, "jobs", "show", response.json()["job_id"]], env=stack["env"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert json.loads(shown.stdout)["status"] == "succeeded"

    # Flower is there, behind basic auth.
    password = re.search(r"user admin, password (\S+)\)", banner).group(1)
    assert requests.get(stack["flower"], timeout=10).status_code == 401
    assert requests.get(stack["flower"], auth=("admin", password), timeout=10).status_code == 200

    check_what_stays_private(stack, admin_key, password)

    # A process that dies is restarted.
    stack_file = stack["data_dir"] / "stack.json"
    processes = json.loads(stack_file.read_text())["processes"]
    os.killpg(processes["worker-gpu"], signal.SIGKILL)
    wait_for(lambda: json.loads(stack_file.read_text())["processes"]["worker-gpu"] != processes["worker-gpu"],
             60, "the gpu worker to be restarted")
    # Ready again once it has loaded its models (/ready's details, with the key, name each worker's pid).
    restarted = json.loads(stack_file.read_text())["processes"]["worker-gpu"]
    wait_for(lambda: restarted in [worker.get("pid") for worker in requests.get(
        f"{url}/ready", headers=headers, timeout=10).json().get("workers", [])], 240,
        "the restarted gpu worker to be ready", interval=1)
    response = requests.post(f"{url}/api/v1/predict", headers=headers, timeout=60,
                             json={"task": "embed", "inputs": ["after the restart"], "wait": 30})
    assert response.status_code == 200, response.text

    made_by_up = up_keys(stack["env"])
    assert [key["name"] for key in made_by_up] == ["cortex up admin"]

    # SIGTERM stops everything.
    processes = json.loads(stack_file.read_text())["processes"]
    stack["process"].send_signal(signal.SIGTERM)
    assert stack["process"].wait(90) == 0
    assert not stack_file.exists()
    assert [name for name, pid in processes.items() if alive(pid)] == []

    # Started again on the same folder: the same admin key, and no new key.
    second = stack["start_again"]()
    assert re.search(r"admin key: (\S+)", stack["output_again"].read_text()).group(1) == admin_key
    assert requests.get(f"{url}/ready", headers=headers, timeout=10).json()["status"] == "ready"
    assert up_keys(stack["env"]) == made_by_up
    second.send_signal(signal.SIGTERM)
    assert second.wait(90) == 0


def check_worker_metrics(stack, banner: str) -> None:
    """Each worker kind answers Prometheus on its own port (stack.json and the banner say where); the
    prefork kinds with their pool children's figures (each child loaded its models)."""
    endpoints = json.loads((stack["data_dir"] / "stack.json").read_text())["worker_metrics"]
    assert {"gpu", "nlp", "training"} <= set(endpoints)
    assert len(set(endpoints.values())) == len(endpoints) and all(url in banner for url in endpoints.values())
    # The task's duration is observed when the task returns, just after its reply reached the caller.
    task_ran = re.compile(r'^cortex_task_duration_seconds_count\{queue="gpu",task="cortex.inference.run_gpu_jobs"\} '
                          r'[1-9]', flags=re.MULTILINE)
    deadline = time.monotonic() + 15
    gpu = requests.get(endpoints["gpu"], timeout=10).text
    while not task_ran.search(gpu) and time.monotonic() < deadline:
        time.sleep(0.5)
        gpu = requests.get(endpoints["gpu"], timeout=10).text
    assert task_ran.search(gpu), gpu[-2000:]
    assert 'cortex_model_batch_size_count{model="all-MiniLM-L6-v2"}' in gpu
    nlp = requests.get(endpoints["nlp"], timeout=10).text
    assert re.search(r'^cortex_model_load_seconds_count\{model="vader"\} [1-9]', nlp, flags=re.MULTILINE), nlp[-2000:]
    assert 'cortex_resource_utilization_ratio{device="",resource="cpu"}' in nlp


def up_keys(env: dict[str, str]) -> list[dict]:
    listed = subprocess.run([CORTEX, "keys", "list", "--made-by-up"], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def _descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                        found.append(int(entry.name))
                        frontier.append(int(entry.name))
                except (OSError, IndexError, ValueError):
                    pass
    return found


def check_what_stays_private(stack, admin_key: str, flower_password: str) -> None:
    data_dir, url = stack["data_dir"], stack["url"]
    described = json.loads((data_dir / "stack.json").read_text())
    redis_url, database_url = described["redis_url"], described["database_url"]
    redis_password = (data_dir / "redis.password").read_text().strip()
    postgres_password = (data_dir / "postgres.password").read_text().strip()
    assert redis_password in redis_url and postgres_password in database_url
    secrets = {"redis": redis_password, "postgres": postgres_password, "flower": flower_password,
               "admin key": admin_key}
    # The banner shows the URLs masked.
    banner = stack["output"].read_text()
    assert redis_password not in banner and postgres_password not in banner

    # The services need their passwords.
    redis_port = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs["port"]
    postgres_port = psycopg.conninfo.conninfo_to_dict(database_url)["port"]
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=redis_port).ping()
    assert redis.Redis.from_url(redis_url).ping()
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(f"postgresql://cortex@127.0.0.1:{postgres_port}/cortex", connect_timeout=5)
    psycopg.connect(database_url, connect_timeout=5).close()

    # No secret on the command line of `cortex up` or of anything it started (gunicorn and Celery
    # children included).
    for pid in [stack["process"].pid, *_descendants(stack["process"].pid)]:
        try:
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        leaked = [name for name, secret in secrets.items() if secret in command_line]
        assert leaked == [], (pid, command_line.replace("\0", " "))

    # A key sent in the query string (the gateway ignores it) is not written to the access log.
    sent = "ctx_0123456789ab_" + "q" * 43
    for query in (f"api_key={sent}", f"key={sent}", f"token={sent}", f"access_token={admin_key}"):
        requests.get(f"{url}/ready?{query}", timeout=10)
    gateway_log = data_dir / "logs" / "gateway.log"
    wait_for(lambda: gateway_log.read_text().count("GET /ready?") >= 4, 30, "the access log lines")
    assert "access_token=[redacted]" in gateway_log.read_text()

    # No secret in any log, and every file under the data folder is its user's alone.
    for path in (data_dir / "logs").iterdir():
        text = path.read_text(errors="replace")
        leaked = [name for name, secret in {**secrets, "query key": sent[17:]}.items() if secret in text]
        assert leaked == [], (path, leaked)
    wrong = []
    for root, folders, files in os.walk(data_dir):
        for name in files:
            path = Path(root) / name
            info = path.lstat()
            if stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) != 0o600:
                wrong.append((str(path), oct(stat.S_IMODE(info.st_mode))))
        mode = stat.S_IMODE(Path(root).stat().st_mode)
        # As root, PostgreSQL runs as its own system user, which must pass through the data folder (0710).
        allowed = {0o700, 0o710} if Path(root) == data_dir and os.geteuid() == 0 else {0o700}
        if mode not in allowed:
            wrong.append((root, oct(mode)))
    assert wrong == []


def test_a_sigkilled_cortex_up_takes_every_process_it_started_with_it(stack):
    """`cortex up` itself SIGKILLed (an OOM kill, `kill -9`): it cannot stop its children in order, so each
    must go by itself (the parent-death signal the supervisor sets in every child, and each service's own
    children following their parent), leaving no process and no port behind for the next `cortex up`."""
    import psutil

    up = psutil.Process(stack["process"].pid)
    wait_for(lambda: requests.get(f"{stack['url']}/ready", timeout=10).json().get("status") == "ready", 300,
             "the stack to be ready", interval=1)
    tree = up.children(recursive=True)
    command_lines = " ".join(" ".join(process.cmdline()) for process in tree)
    # Every kind of process `cortex up` runs is in the tree (with their own children: PostgreSQL's backends,
    # gunicorn's and the prefork workers' processes).
    assert all(kind in command_lines for kind in ("valkey-server", "postgres", "gunicorn", "celery", "flower",
                                                  "beat")), command_lines
    described = json.loads((stack["data_dir"] / "stack.json").read_text())
    redis_port = redis.Redis.from_url(described["redis_url"]).connection_pool.connection_kwargs["port"]
    postgres_port = int(psycopg.conninfo.conninfo_to_dict(described["database_url"])["port"])
    ports = {"gateway": int(stack["url"].rsplit(":", 1)[1]), "flower": int(stack["flower"].rsplit(":", 1)[1]),
             "redis": redis_port, "postgres": postgres_port}

    os.kill(up.pid, signal.SIGKILL)  # the supervisor alone, not its process group
    stack["process"].wait(10)

    def survivors() -> list[str]:
        left = []
        for process in tree:
            try:
                # Same pid and start time: the very process (not a new one that reused its pid).
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{process.pid} {' '.join(process.cmdline())[:120]}")
            except psutil.NoSuchProcess:
                continue
        return left

    deadline = time.monotonic() + 60
    while survivors() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert survivors() == []

    def taken(port: int) -> bool:
        import socket

        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return True
        return False

    assert {name: port for name, port in ports.items() if taken(port)} == {}
    # The next `cortex up` on the same folder starts (on the same ports) and serves.
    second = stack["start_again"]()
    assert requests.get(f"{stack['url']}/ready", timeout=10).json()["status"] in ("ready", "not_ready")
    second.send_signal(signal.SIGTERM)
    assert second.wait(90) == 0
