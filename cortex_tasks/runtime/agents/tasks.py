"""The agent task: one run of a declared agent, on the gpu queue (its tools embed, search and answer with the
models held there; the chat model itself is remote)."""
from __future__ import annotations

from typing import Any

from cortex_tasks import app
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import AgentRunMessage
from cortex_tasks.core.contracts.messages import MessageRefused, read_message
from cortex_tasks.core.jobs.outcomes import publish_outcome
from cortex_tasks.core.jobs.running import refuse_message, run_job, shown_outcome
from cortex_tasks.core.retry_policy import TRANSIENT_ERRORS
from cortex_tasks.runtime.agents import service
from cortex_tasks.runtime.inference.streaming import publish_event


# A run of max 50 steps, each a model call of up to CORTEX_OPENAI_TIMEOUT and its tools, ends well within.
@app.task(name=task_names.AGENTS_RUN_AGENT, soft_time_limit=540, time_limit=600, autoretry_for=TRANSIENT_ERRORS,
          retry_backoff=True, max_retries=3, ignore_result=True)
def run_agent(**kwargs: Any) -> dict[str, Any]:
    try:
        message = read_message(AgentRunMessage, kwargs)
    except MessageRefused as exc:
        return refuse_message(kwargs, exc)
    outcome = run_job(message.job_id, lambda: service.run_agent(
        job_id=message.job_id, agent=message.agent, system=message.system, prompt=message.prompt,
        input=message.input, caller=message.caller, stream=message.stream))
    publish_outcome(message.reply_to, message.job_id, outcome)
    if message.stream:
        publish_event(message.job_id, {"type": "done", "status": outcome["status"]} if outcome["status"] ==
                      "succeeded" else {"type": "error", "error": outcome.get("error")})
    return shown_outcome(outcome)
