"""A deliberately slow job for delivery tests, loaded into a test worker with `-I tests.support.slow_tasks`.

It goes through the same job lifecycle as every real task (run_job: count the delivery, record the
outcome once); only its work is a sleep, so a test can kill the worker while it is surely running.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from cortex_tasks import app
from cortex_tasks.core.jobs.running import run_job


@app.task(name="cortex.testing.hold_job", soft_time_limit=20, time_limit=25)
def hold_job(*, job_id: str, seconds: float, trace_dir: str) -> dict[str, Any]:
    trace = Path(trace_dir)

    def work() -> dict[str, Any]:
        (trace / f"started-{os.getpid()}").write_text(str(time.time()))
        time.sleep(seconds)
        with open(trace / "completions", "a") as completions:
            completions.write(f"{os.getpid()}\n")
        return {"outputs": ["held"]}

    return run_job(job_id, work)
