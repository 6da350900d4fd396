"""`cortex up`: the whole stack on one machine, with embedded services where no URL is configured.

Starts (as needed) Redis and PostgreSQL+pgvector, migrates, then the gateway, the three workers, Beat and
Flower under one supervisor; writes `<data>/stack.json` so the CLI and workers find the stack; prints
where everything is; restarts what dies; stops everything on Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cortex_tasks.core.atomic_files import replace_file
from cortex_tasks.core.auth.keys import create_key
from cortex_tasks.core.settings import STACK_FILE_NAME, get_settings, reset_settings_cache
from cortex_tasks.core.storage.migrate import upgrade_to_head
from cortex_tasks.core.storage.sealing import ensure_key_file
from cortex_tasks.stack.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from cortex_tasks.stack.supervisor import Supervisor
from gunicorn_conf import command as gateway_command
from workers import PROFILES


@dataclass(frozen=True)
class UpOptions:
    data_dir: Path
    host: str
    port: int
    flower_port: int
    web_workers: int | None  # None: gunicorn_conf.py's default
    web_threads: int | None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _saved_ports(data_dir: Path) -> dict[str, int]:
    try:
        return json.loads((data_dir / "ports.json").read_text())
    except (OSError, ValueError):
        return {}


def _flower_password(data_dir: Path) -> str:
    configured = get_settings().flower_password
    if configured:
        return configured
    path = data_dir / "flower_password"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(12))
        path.chmod(0o600)
    return path.read_text().strip()


def _wait_http(url: str, timeout: float, supervisor: Supervisor) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not supervisor.stopping:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        supervisor.check_once()
        time.sleep(0.5)
    return False


def _workers_ready(url: str) -> set[str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return set(json.load(response).get("queues_served", []))
    except (OSError, ValueError):
        return set()


def run_up(options: UpOptions) -> int:
    data_dir = options.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    ensure_key_file(data_dir)  # sensitive values are sealed at rest from the first run (storage/sealing.py)
    stack_file = data_dir / STACK_FILE_NAME
    if stack_file.exists():
        previous = json.loads(stack_file.read_text() or "{}")
        if previous.get("pid") and _pid_alive(int(previous["pid"])):
            print(f"cortex: a stack is already running from {data_dir} (pid {previous['pid']}).", file=sys.stderr)
            return 1
        stack_file.unlink()

    ports = _saved_ports(data_dir)
    env = {**os.environ, "CORTEX_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    stack: dict[str, object] = {"pid": os.getpid()}

    def publish_stack() -> None:
        # stack.json tells the CLI and operators where everything is, including each process's pid.
        if "redis_url" in stack:
            # Replaced whole: a reader (the CLI, a test, a script) never sees a half-written file.
            described = {**stack, "processes": supervisor.pids()}
            replace_file(stack_file, json.dumps(described, indent=2).encode())

    supervisor = Supervisor(data_dir / "logs", env, on_change=publish_stack)

    def stop(signum: int, _frame: object) -> None:
        supervisor.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        # The variables themselves, not get_settings(): it would fall back to a previous run's stack.json,
        # and unset here means "start one".
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            redis_server = EmbeddedRedis(data_dir / "redis", ports.get("redis") or free_port())
            supervisor.add_and_start("redis", redis_server.argv(), is_service=True)
            redis_server.wait_ready()
            redis_url, ports["redis"] = redis_server.url, redis_server.port
        database_url = os.environ.get("DATABASE_URL")
        if not database_url:
            postgres = EmbeddedPostgres(data_dir / "postgres", ports.get("postgres") or free_port())
            # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM would wait for every client to disconnect.
            supervisor.add_and_start("postgres", postgres.argv(), user=postgres.system_user,
                                     stop_signal=signal.SIGINT, is_service=True)
            postgres.wait_ready()
            database_url, ports["postgres"] = postgres.url, postgres.port
        replace_file(data_dir / "ports.json", json.dumps(ports).encode())
        artifact_dir = Path(os.environ.get("CORTEX_ARTIFACT_DIR") or data_dir / "artifacts")
        artifact_dir.mkdir(parents=True, exist_ok=True)
        env.update(REDIS_URL=redis_url, DATABASE_URL=database_url, CORTEX_ARTIFACT_DIR=str(artifact_dir))
        os.environ.update(REDIS_URL=redis_url, DATABASE_URL=database_url, CORTEX_ARTIFACT_DIR=str(artifact_dir))

        reset_settings_cache()
        upgrade_to_head(database_url)
        admin_line = _admin_key_line()

        gateway_url = f"http://{'127.0.0.1' if options.host in ('0.0.0.0', '::') else options.host}:{options.port}"
        flower_url = f"http://127.0.0.1:{options.flower_port}"
        stack.update(redis_url=redis_url, database_url=database_url, artifact_dir=str(artifact_dir),
                     gateway_url=gateway_url, flower_url=flower_url)
        publish_stack()

        python = sys.executable
        supervisor.add_and_start(
            "gateway", gateway_command(f"{options.host}:{options.port}", options.web_workers,
                                       options.web_threads, "--access-logfile", "-"),
            # The gateway processes' metrics files (gunicorn_conf.py), emptied at every start.
            extra_env={"PROMETHEUS_MULTIPROC_DIR": os.environ.get("PROMETHEUS_MULTIPROC_DIR")
                       or str(data_dir / "gateway-metrics")})
        for profile in PROFILES.values():
            supervisor.add_and_start(f"worker-{profile.name}",
                                     [python, "-m", "celery", *profile.celery_argv()])
        supervisor.add_and_start("beat", [python, "-m", "celery", "-A", "cortex_tasks", "beat",
                                          "-s", str(data_dir / "celerybeat-schedule")])
        password = _flower_password(data_dir)
        supervisor.add_and_start("flower", [python, "-m", "celery", "-A", "cortex_tasks", "flower",
                                            f"--port={options.flower_port}", "--address=127.0.0.1",
                                            f"--basic-auth=admin:{password}"])

        print(f"cortex: starting in {data_dir} ...", flush=True)
        if not _wait_http(f"{gateway_url}/ready", 180, supervisor):
            if supervisor.stopping:
                return 0
            print("cortex: the gateway did not become ready; see the logs in "
                  f"{data_dir / 'logs'}", file=sys.stderr, flush=True)
        deadline = time.monotonic() + 240
        wanted = {queue for profile in PROFILES.values() for queue in profile.queues}
        while not supervisor.stopping and time.monotonic() < deadline:
            if wanted <= _workers_ready(f"{gateway_url}/ready"):
                break
            supervisor.check_once()
            time.sleep(0.5)
        _print_banner(options, data_dir, gateway_url, flower_url, password, redis_url, database_url,
                      artifact_dir, admin_line)
        while not supervisor.stopping:
            supervisor.check_once()
            time.sleep(0.5)
        print("cortex: stopping ...", flush=True)
        return 0
    finally:
        supervisor.stop_all()
        if stack_file.exists():
            stack_file.unlink()
        print("cortex: stopped.", flush=True)


def _admin_key_line() -> str:
    if get_settings().admin_key:
        return "admin key: the value of CORTEX_ADMIN_KEY"

    # The operator's own key, like CORTEX_ADMIN_KEY: on the admin tier (unlimited by default), so trying
    # Cortex out is not throttled; keys for clients get their tiers from `cortex keys create --tier`.
    issued = create_key("model_admin", name="cortex up", tier=get_settings().admin_key_tier)
    return f"admin key: {issued.key}"


def _print_banner(options: UpOptions, data_dir: Path, gateway_url: str, flower_url: str, password: str,
                  redis_url: str, database_url: str, artifact_dir: Path, admin_line: str) -> None:
    lines = [
        "",
        "Cortex is up.",
        f"  gateway    {gateway_url}  (docs: {gateway_url}/api/v1/docs)",
        f"  flower     {flower_url}  (user admin, password {password})",
        f"  redis      {redis_url}",
        f"  postgres   {database_url}",
        f"  artifacts  {artifact_dir}  (filesystem object store)",
        f"  data       {data_dir}  (logs in {data_dir / 'logs'})",
        f"  {admin_line}",
        "",
        "Try:",
        f"  curl -s {gateway_url}/api/v1/predict -H 'Authorization: Bearer <admin key>' "
        "-H 'Content-Type: application/json' -d '{\"task\": \"embed\", \"inputs\": [\"hello world\"]}'",
        "Stop with Ctrl-C.",
        "",
    ]
    print("\n".join(lines), flush=True)
