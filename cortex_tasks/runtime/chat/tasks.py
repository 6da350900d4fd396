"""The chat task: one turn of one session, on the gpu queue (where the generation model lives)."""
from __future__ import annotations

from typing import Any

from cortex_tasks import app
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import ChatReplyMessage
from cortex_tasks.core.contracts.messages import MessageRefused, read_message
from cortex_tasks.core.jobs.outcomes import publish_outcome
from cortex_tasks.core.jobs.running import refuse_message, run_job
from cortex_tasks.core.retry_policy import TRANSIENT_ERRORS
from cortex_tasks.runtime.chat import service


# Past the soft limit a reply is abandoned; the session lock outlives the hard limit (chat/config.py).
# The kwargs are the message (core.contracts.job_messages.ChatReplyMessage), read through the contract.
@app.task(name=task_names.CHAT_REPLY, soft_time_limit=240, time_limit=300, autoretry_for=TRANSIENT_ERRORS,
          retry_backoff=True, max_retries=3, ignore_result=True)
def reply(**kwargs: Any) -> dict[str, Any]:
    try:
        turn = read_message(ChatReplyMessage, kwargs)
    except MessageRefused as exc:
        return refuse_message(kwargs, exc)
    outcome = run_job(turn.job_id, lambda: service.reply(
        job_id=turn.job_id, session_id=turn.session_id, owner=turn.owner, message=turn.message, model=turn.model,
        system=turn.system, params=turn.params, prompt=turn.prompt))
    publish_outcome(turn.reply_to, turn.job_id, outcome)
    return {"status": outcome["status"]}
