"""Agents: POST/GET /api/v1/agents, GET/DELETE /api/v1/agents/{name}, POST /api/v1/agents/{name}/run.

Declaring and deleting need `deploy` (model_admin), reading needs `read`, running needs `predict`. A run is
a job on the gpu queue (`cortex.agents.run_agent`): the answer comes within the wait budget (200), or as a
job to poll (202), or as Server-Sent Events with `"stream": true`. The system prompt is rendered here from
the agent's prompt (`name@version`, or `name` = its production version now) and the run's `variables`, so
a missing variable is a 422 before anything is queued; the job records the exact version.

An agent's tools act with the key that runs it (runtime/agents/tools.py): a run can never reach more than
its caller could with its own requests.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cortex_tasks.core.agents import service
from cortex_tasks.core.agents.declarations import AgentDeclaration
from cortex_tasks.core.auth.permissions import check_allowed
from cortex_tasks.core.auth.roles import DEPLOY, PREDICT, READ
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import AgentRunMessage
from cortex_tasks.core.jobs.store import NewJob
from cortex_tasks.core.openai.availability import refuse_unavailable_openai
from cortex_tasks.core.openai.config import openai_config
from cortex_tasks.core.prompts import service as prompts
from cortex_tasks.core.queues import GPU, priority_of
from cortex_tasks.core.request_fields import WaitSeconds
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.tenancy import current_tenant
from cortex_web.agent_streams import agent_events, events_response
from cortex_web.audit import audited
from cortex_web.auth import current_principal, require
from cortex_web.dispatch import job_reply, submit_and_wait
from cortex_web.errors import ApiError
from cortex_web.limits import limit_model_work
from cortex_web.request_body import CONTROL_CHARACTERS, parse_body

bp = Blueprint("agents", __name__, url_prefix="/api/v1")


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    input: str = Field(min_length=1, max_length=8000)
    variables: dict[str, Any] = Field(default_factory=dict, description="Values of the system prompt's variables")
    stream: bool = False
    priority: str = Field(default="normal", pattern="^(high|normal|low)$")
    wait: WaitSeconds = Field(default=None, ge=0, le=120)

    @field_validator("input")
    @classmethod
    def _plain_text(cls, value: str) -> str:
        if not value.strip() or CONTROL_CHARACTERS.search(value):
            raise ValueError("must be non-blank text without control characters")
        return value


REQUEST_BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("post", "/api/v1/agents"): AgentDeclaration,
    ("post", "/api/v1/agents/{name}/run"): RunRequest,
}


@bp.post("/agents")
@require(DEPLOY)
@audited("agent.create")
def declare_agent() -> tuple[Response, int]:
    """Declare an agent: model, system prompt, tools, step limit and token budget."""
    body = parse_body(AgentDeclaration, get_settings().max_json_depth)
    return jsonify(service.declare(body, current_principal().key_id)), 201


@bp.get("/agents")
@require(READ)
def list_agents() -> Response:
    return jsonify({"agents": service.list_agents()})


@bp.get("/agents/<name>")
@require(READ)
def show_agent(name: str) -> Response:
    return jsonify(service.get_agent(name))


@bp.delete("/agents/<name>")
@require(DEPLOY)
@audited("agent.delete")
def delete_agent(name: str) -> Response:
    service.delete_agent(name)
    return jsonify({"agent": name, "deleted": True})


def _refuse_unreachable_model(model: str) -> None:
    refuse_unavailable_openai(model)  # 503 unconfigured, 402 budget spent (for the catalogue's OpenAI models)
    if not openai_config().configured:
        raise ApiError(503, "openai_not_configured", f"Model {model!r} is reached through the OpenAI API, which "
                       "is not configured on this deployment (set CORTEX_OPENAI_API_KEY and, for another "
                       "OpenAI-compatible server, CORTEX_OPENAI_BASE_URL).", {"model": model})


@bp.post("/agents/<name>/run")
@require(PREDICT)
@limit_model_work
def run_agent(name: str) -> Any:
    """Run the agent on `input` as a job: 200 with the answer and its steps, 202 to poll, or SSE."""
    body = parse_body(RunRequest, get_settings().max_json_depth)
    agent = service.get_agent(name)
    principal = current_principal()
    # The run generates text with the agent's model: a key limited to tasks or models must allow that.
    check_allowed(principal, "generate", agent["model"])
    _refuse_unreachable_model(agent["model"])
    resolved = prompts.resolve(agent["prompt"])
    system = resolved.render(body.variables)
    caller = {"key_id": principal.key_id, "role": principal.role, "tier": principal.tier, "tenant": principal.tenant,
              "models": sorted(principal.models) if principal.models is not None else None,
              "tasks": sorted(principal.tasks) if principal.tasks is not None else None}
    new_job = NewJob(owner=principal.key_id, kind="agent", task="agent", model=agent["model"],
                     priority=priority_of(body.priority), total=agent["max_steps"],
                     params={"agent": name, "prompt": resolved.reference})

    def message(job_id: str, reply_to: str | None = None) -> AgentRunMessage:
        return AgentRunMessage(job_id=job_id, reply_to=reply_to, tenant=current_tenant(), agent=agent,
                               system=system, prompt=resolved.as_record(), input=body.input, caller=caller,
                               stream=body.stream)

    if body.stream:
        return events_response(agent_events(new_job, message))
    wait = get_settings().default_wait_seconds if body.wait is None else body.wait
    return job_reply(submit_and_wait(new_job, task_names.AGENTS_RUN_AGENT, GPU, message, wait))
