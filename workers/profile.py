"""A worker profile: which queues a kind of worker consumes and how its pool is shaped.

`cortex worker <name>` runs `celery -A cortex_tasks worker` with a profile's arguments; the Procfile,
compose and `cortex up` all start workers that way, so the three places cannot drift apart.

Each kind has its own Prometheus port (`metrics_port`, docs/metrics.md), so that kinds sharing a machine
do not collide; a prefork kind also needs a folder for its processes' metrics files before it starts
(`metrics_environment`).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# prometheus_client's multiprocess mode reads this when it is first imported.
MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
PORT_VARIABLE = "CORTEX_WORKER_METRICS_PORT"


@dataclass(frozen=True)
class WorkerProfile:
    name: str
    queues: tuple[str, ...]
    pool: str
    concurrency: int
    prefetch_multiplier: int = 1
    max_tasks_per_child: int | None = None
    max_memory_per_child_kb: int | None = None
    extra_args: tuple[str, ...] = field(default=())
    description: str = ""
    # This kind's Prometheus port unless CORTEX_WORKER_METRICS_PORT says otherwise; 0: no endpoint.
    metrics_port: int = 0

    def celery_argv(self, hostname_suffix: str = "%h") -> list[str]:
        argv = ["-A", "cortex_tasks", "worker", "-Q", ",".join(self.queues), "-P", self.pool,
                "-c", str(self.concurrency), f"--prefetch-multiplier={self.prefetch_multiplier}",
                "-n", f"{self.name}@{hostname_suffix}", "-E", "--without-gossip", "--without-mingle"]
        if self.max_tasks_per_child:
            argv.append(f"--max-tasks-per-child={self.max_tasks_per_child}")
        if self.max_memory_per_child_kb:
            argv.append(f"--max-memory-per-child={self.max_memory_per_child_kb}")
        return argv + list(self.extra_args)

    def metrics_environment(self, environ: dict[str, str] | os._Environ[str],
                            metrics_dir: Path | None = None) -> dict[str, str]:
        """The variables a worker of this kind is started with so that it exports its metrics: its port
        (unless `environ` sets one) and, for a prefork pool, a folder for its processes' metrics files:
        `metrics_dir`, or the one `environ` names, with an earlier run's files removed (they would be
        summed into this run's counters); else a new private one under the temporary folder."""
        added = {PORT_VARIABLE: environ.get(PORT_VARIABLE) or str(self.metrics_port)}
        if self.pool != "prefork":
            return added
        given = metrics_dir or (Path(environ[MULTIPROC_DIR_VARIABLE]) if environ.get(MULTIPROC_DIR_VARIABLE) else None)
        if given is None:
            folder = Path(tempfile.mkdtemp(prefix=f"cortex-worker-{self.name}-metrics-"))
        else:
            given.mkdir(parents=True, exist_ok=True, mode=0o700)
            for stale in given.glob("*.db"):
                stale.unlink()
            folder = given
        return {**added, MULTIPROC_DIR_VARIABLE: str(folder)}
