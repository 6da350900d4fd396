"""The chat task: one turn of one session, on the gpu queue (where the generation model lives)."""
from __future__ import annotations

from typing import Any

from cortex_tasks import app
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.jobs.outcomes import publish_outcome
from cortex_tasks.core.jobs.running import run_job
from cortex_tasks.core.retry_policy import TRANSIENT_ERRORS
from cortex_tasks.runtime.chat import service


# Past the soft limit a reply is abandoned; the session lock outlives the hard limit (chat/config.py).
@app.task(name=task_names.CHAT_REPLY, soft_time_limit=240, time_limit=300, autoretry_for=TRANSIENT_ERRORS,
          retry_backoff=True, max_retries=3, ignore_result=True)
def reply(*, job_id: str, session_id: str, owner: str, message: str, model: str | None = None,
          system: str | None = None, params: dict[str, Any] | None = None,
          reply_to: str | None = None) -> dict[str, Any]:
    outcome = run_job(job_id, lambda: service.reply(job_id=job_id, session_id=session_id, owner=owner,
                                                    message=message, model=model, system=system, params=params))
    publish_outcome(reply_to, job_id, outcome)
    return {"status": outcome["status"]}
