"""`cortex up`: the whole stack on one machine, with embedded services where no URL is configured.

Starts (as needed) Redis and PostgreSQL+pgvector, migrates, then the gateway, the three workers, Beat and
Flower under one supervisor; writes `<data>/stack.json` so the CLI and workers find the stack; prints
where everything is; restarts what dies; stops everything on Ctrl-C or SIGTERM.

Everything it writes under the data folder is its user's alone (0600 files, 0700 folders; see
private_files.py): the umask is set before anything starts, and files left by an older version are
brought to those modes. Secrets never go on a command line (`ps` shows those to every user) or into
the logs: Flower's password goes to Flower through its environment, the services' passwords are in their
URLs, which the banner prints masked.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cortex_tasks.core.atomic_files import replace_file
from cortex_tasks.core.observability.logs import configure_logging
from cortex_tasks.core.settings import STACK_FILE_NAME, get_settings, reset_settings_cache
from cortex_tasks.core.storage.migrate import upgrade_to_head
from cortex_tasks.core.storage.sealing import ensure_key_file
from cortex_tasks.stack.admin_key import ADMIN_KEY_FILE, stack_admin_key
from cortex_tasks.stack.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, port_or_free_one
from cortex_tasks.stack.flower import FLOWER_USER, flower_environment, warn_if_deprecated_name
from cortex_tasks.stack.private_files import PRIVATE_UMASK, private_dir, read_or_create_secret, restrict_tree
from cortex_tasks.stack.supervisor import Supervisor
from gunicorn_conf import ACCESS_LOG_TO_STDOUT
from gunicorn_conf import command as gateway_command
from workers import PROFILES
from workers.profile import PORT_VARIABLE, WorkerProfile

log = logging.getLogger(__name__)

# Bind addresses that mean "every interface"; the stack's own clients reach such a gateway on loopback.
WILDCARD_HOSTS = ("0.0.0.0", "::")  # nosec B104 - compared with --host, never bound here


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
    warn_if_deprecated_name()
    configured = get_settings().flower_password
    if configured:
        return configured
    return read_or_create_secret(data_dir / "flower_password", nbytes=12)


def masked(url: str) -> str:
    """The URL with its password replaced by ***, for printing."""
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _wait_http(url: str, timeout: float, supervisor: Supervisor) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not supervisor.stopping:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # nosec B310 - our own http:// gateway URL
                if response.status == 200:
                    return True
        except OSError:
            pass
        supervisor.check_once()
        time.sleep(0.5)
    return False


def _workers_ready(url: str, admin_key: str) -> set[str]:
    """The queues served by ready workers, from /ready's details (which need a key)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {admin_key}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:  # nosec B310 - our own http:// gateway URL
            return set(json.load(response).get("queues_served", []))
    except urllib.error.HTTPError as answer:  # a 503 carries the details too
        try:
            return set(json.load(answer).get("queues_served", []))
        except ValueError:
            return set()
    except (OSError, ValueError):
        return set()


def run_up(options: UpOptions) -> int:
    data_dir = options.data_dir
    # The supervisor's own lines (starts, restarts, stops) in the stack's log format; on a terminal that is
    # text (CORTEX_LOG_FORMAT=auto), so the banner and the lines around it stay readable. Its children
    # write to files under <data>/logs, so theirs are JSON lines unless CORTEX_LOG_FORMAT=text.
    configure_logging("up")
    # Before anything is written or started: every file made from here on, by this process or a child,
    # is 0600, every folder 0700.
    os.umask(PRIVATE_UMASK)
    private_dir(data_dir)
    ensure_key_file(data_dir)  # sensitive values are sealed at rest from the first run (storage/sealing.py)
    stack_file = data_dir / STACK_FILE_NAME
    if stack_file.exists():
        previous = json.loads(stack_file.read_text() or "{}")
        if previous.get("pid") and _pid_alive(int(previous["pid"])):
            log.error("a stack is already running from %s (pid %s)", data_dir, previous["pid"])
            return 1
        stack_file.unlink()
    restrict_tree(data_dir)  # files an older version wrote were 0644

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
        admin_key, admin_line = _admin_key(data_dir)

        gateway_url = f"http://{'127.0.0.1' if options.host in WILDCARD_HOSTS else options.host}:{options.port}"
        # Another stack's Flower may hold the port: take a free one and say so (the banner prints it), rather
        # than print the other stack's URL while ours crash-loops on "Address already in use".
        flower_port = port_or_free_one(options.flower_port)
        if flower_port != options.flower_port:
            log.warning("port %d is taken; Flower uses %d", options.flower_port, flower_port)
        flower_url = f"http://127.0.0.1:{flower_port}"
        stack.update(redis_url=redis_url, database_url=database_url, artifact_dir=str(artifact_dir),
                     gateway_url=gateway_url, flower_url=flower_url)
        publish_stack()

        python = sys.executable
        supervisor.add_and_start(
            "gateway", gateway_command(f"{options.host}:{options.port}", options.web_workers,
                                       options.web_threads, *ACCESS_LOG_TO_STDOUT),
            # The gateway processes' metrics files (gunicorn_conf.py), emptied at every start.
            extra_env={"PROMETHEUS_MULTIPROC_DIR": os.environ.get("PROMETHEUS_MULTIPROC_DIR")
                       or str(data_dir / "gateway-metrics")})
        worker_metrics = {}
        for profile in PROFILES.values():
            metrics_env = _worker_metrics_environment(profile, options.host, data_dir)
            if metrics_env[PORT_VARIABLE] != "0":
                worker_metrics[profile.name] = f"http://{_local(options.host)}:{metrics_env[PORT_VARIABLE]}/metrics"
            supervisor.add_and_start(f"worker-{profile.name}",
                                     [python, "-m", "celery", *profile.celery_argv()], extra_env=metrics_env)
        stack["worker_metrics"] = worker_metrics
        publish_stack()
        # Beat prints its banner before any log line: not in a JSON log (`--quiet` is celery's own option).
        supervisor.add_and_start("beat", [python, "-m", "celery", "-A", "cortex_tasks",
                                          *(["--quiet"] if _children_log_json() else []), "beat",
                                          "-s", str(data_dir / "celerybeat-schedule")])
        password = _flower_password(data_dir)
        supervisor.add_and_start("flower", [python, "-m", "celery", "-A", "cortex_tasks", "flower",
                                            f"--port={flower_port}", "--address=127.0.0.1"],
                                 extra_env=flower_environment(password))

        log.info("starting in %s ...", data_dir)
        # The gateway answering first (/health), then its workers (/ready's details: every queue served).
        if not _wait_http(f"{gateway_url}/health", 180, supervisor):
            if supervisor.stopping:
                return 0
            log.error("the gateway did not start; see the logs in %s", data_dir / "logs")
        deadline = time.monotonic() + 240
        wanted = {queue for profile in PROFILES.values() for queue in profile.queues}
        while not supervisor.stopping and time.monotonic() < deadline:
            if wanted <= _workers_ready(f"{gateway_url}/ready", admin_key):
                break
            supervisor.check_once()
            time.sleep(0.5)
        _print_banner(options, data_dir, gateway_url, flower_url, password, redis_url, database_url,
                      artifact_dir, admin_line, worker_metrics)
        while not supervisor.stopping:
            supervisor.check_once()
            time.sleep(0.5)
        log.info("stopping ...")
        return 0
    finally:
        supervisor.stop_all()
        if stack_file.exists():
            stack_file.unlink()
        log.info("stopped")


def _children_log_json() -> bool:
    """Whether the stack's children write JSON lines: they write to files, so `auto` means JSON."""
    return get_settings().log_format != "text"


def _local(host: str) -> str:
    return "127.0.0.1" if host in WILDCARD_HOSTS else host


def _worker_metrics_environment(profile: WorkerProfile, host: str, data_dir: Path) -> dict[str, str]:
    """A worker's Prometheus endpoint in this stack: its kind's port (another one if that is taken: a
    second stack on this machine), on the gateway's address; a prefork worker's metrics files in the data
    folder, emptied now. CORTEX_WORKER_METRICS_PORT=0 turns every worker's off; any other value is not
    used here, where one port cannot serve three workers."""
    off = os.environ.get(PORT_VARIABLE) == "0" or not profile.metrics_port
    port = 0 if off else port_or_free_one(profile.metrics_port)
    if port not in (0, profile.metrics_port):
        print(f"cortex: port {profile.metrics_port} is taken; the {profile.name} worker's metrics use {port}",
              flush=True)
    return {**profile.metrics_environment({PORT_VARIABLE: str(port)}, data_dir / "worker-metrics" / profile.name),
            "CORTEX_WORKER_METRICS_ADDRESS": host}


def _admin_key(data_dir: Path) -> tuple[str, str]:
    """(the key `cortex up` itself uses, the banner's line about it)."""
    configured = get_settings().admin_key
    if configured:
        return configured, "admin key: the value of CORTEX_ADMIN_KEY"
    key, made_now = stack_admin_key(data_dir)
    # Printed on the terminal only (the banner goes to no log file); kept in the data folder.
    where = f"(new, kept in {data_dir / ADMIN_KEY_FILE})" if made_now else f"(from {data_dir / ADMIN_KEY_FILE})"
    return key, f"admin key: {key}  {where}"


def _print_banner(options: UpOptions, data_dir: Path, gateway_url: str, flower_url: str, password: str,
                  redis_url: str, database_url: str, artifact_dir: Path, admin_line: str,
                  worker_metrics: dict[str, str] | None = None) -> None:
    lines = [
        "",
        "Cortex is up.",
        f"  gateway    {gateway_url}  (docs: {gateway_url}/api/v1/docs)",
        f"  flower     {flower_url}  (user {FLOWER_USER}, password {password})",
        # The URLs with their passwords are in stack.json (0600), for the processes that connect.
        f"  redis      {masked(redis_url)}",
        f"  postgres   {masked(database_url)}",
        f"  artifacts  {artifact_dir}  (filesystem object store)",
        f"  data       {data_dir}  (logs in {data_dir / 'logs'})",
        f"  {admin_line}",
        f"  metrics    {gateway_url}/metrics; workers: "
        + (", ".join(f"{name} {url}" for name, url in (worker_metrics or {}).items()) or "off"),
        "",
        "Try:",
        (f"  curl -s {gateway_url}/api/v1/predict -H 'Authorization: Bearer <admin key>' "
         "-H 'Content-Type: application/json' -d '{\"task\": \"embed\", \"inputs\": [\"hello world\"]}'"),
        "Stop with Ctrl-C.",
        "",
    ]
    print("\n".join(lines), flush=True)
