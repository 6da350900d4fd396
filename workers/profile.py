"""A worker profile: which queues a kind of worker consumes and how its pool is shaped.

`cortex worker <name>` runs `celery -A cortex_tasks worker` with a profile's arguments; the Procfile,
compose and `cortex up` all start workers that way, so the three places cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass, field


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

    def celery_argv(self, hostname_suffix: str = "%h") -> list[str]:
        argv = ["-A", "cortex_tasks", "worker", "-Q", ",".join(self.queues), "-P", self.pool,
                "-c", str(self.concurrency), f"--prefetch-multiplier={self.prefetch_multiplier}",
                "-n", f"{self.name}@{hostname_suffix}", "-E", "--without-gossip", "--without-mingle"]
        if self.max_tasks_per_child:
            argv.append(f"--max-tasks-per-child={self.max_tasks_per_child}")
        if self.max_memory_per_child_kb:
            argv.append(f"--max-memory-per-child={self.max_memory_per_child_kb}")
        return argv + list(self.extra_args)
