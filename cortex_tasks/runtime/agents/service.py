"""One agent run: the model is called with the agent's tools until it answers without calling one.

LangChain supplies the parts (the chat model interface with `bind_tools`, `StructuredTool` with its argument
schema, `AIMessage.tool_calls` / `invalid_tool_calls`, `ToolMessage`); the loop itself is written here
rather than LangChain's `create_agent`, because that lives in the `langchain` package and LangGraph, which
Cortex does not install, and because each step must be recorded and streamed with its tokens as it happens,
the token budget must be checked before a call is made (the next prompt is never shorter than the last one,
so a call that cannot fit is not sent), and a client that left must stop the run between steps.

What stops a run: the step limit (`step_limit_exceeded`: the model still called tools after `max_steps`
calls) and the token budget (`token_budget_exceeded`: prompt and completion tokens of every call, as the
API counted them). Both fail the job with the steps taken so far in the error's details.

A tool call the model gets wrong is answered, not fatal: an unknown tool, arguments that are not JSON or do
not fit the tool's schema, a refusal of the caller's key, and a tool that fails each come back to the model
as a ToolMessage with status "error", so it can correct itself.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages.tool import InvalidToolCall, ToolCall
from langchain_core.tools import StructuredTool
from pydantic import ValidationError

from cortex_tasks.core.auth.keys import Principal
from cortex_tasks.core.errors import CortexError, ItemError
from cortex_tasks.core.jobs import store
from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.tenancy import current_tenant
from cortex_tasks.runtime.agents.chat_model import ToolCallingChatModel
from cortex_tasks.runtime.agents.tools import ToolDenied, build_tools, result_text
from cortex_tasks.runtime.inference.streaming import publish_event, stop_requested
from cortex_tasks.runtime.openai.client import OpenAIUnavailable

log = logging.getLogger(__name__)

# What the model reads of one tool result (the step records the same text).
TOOL_RESULT_CHARS = 4000
# HTTP statuses of the model's own refusals, for a caller that waits (dispatch.job_reply reads them).
MODEL_ERROR_STATUS = {"rate_limited": 429, "budget_exceeded": 402, "openai_not_configured": 503,
                      "openai_rejected": 422}


class RunStopped(JobInputError):
    """A limit stopped the run: the job fails with this code, the steps so far in its details."""


def caller_principal(caller: dict[str, Any]) -> Principal:
    models, tasks = caller.get("models"), caller.get("tasks")
    return Principal(key_id=caller["key_id"], role=caller["role"], tier=caller.get("tier", "default"),
                     tenant=caller["tenant"], models=frozenset(models) if models is not None else None,
                     tasks=frozenset(tasks) if tasks is not None else None)


def _call_tool(tools: dict[str, StructuredTool], call: ToolCall) -> tuple[ToolMessage, dict[str, Any]]:
    """Run one tool call; every failure becomes a tool error for the model (and the step's record)."""
    started = time.perf_counter()
    record: dict[str, Any] = {"id": call["id"], "tool": call["name"], "arguments": call["args"]}
    tool = tools.get(call["name"])
    try:
        if tool is None:
            raise CortexError("unknown_tool", f"There is no tool {call['name']!r}; the tools are: "
                              f"{', '.join(sorted(tools))}.")
        text = result_text(tool.invoke(call["args"]), TOOL_RESULT_CHARS)
        record.update(status="ok", result=text)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(part) for part in error['loc']) or '(arguments)'}: {error['msg']}"
                             for error in exc.errors(include_url=False, include_input=False))
        record.update(status="error", error={"code": "invalid_arguments", "message": problems})
    except ToolDenied as exc:
        record.update(status="denied", error={"code": exc.code, "message": exc.message})
    except CortexError as exc:  # the tool's own refusal: a missing collection, a bad series, ...
        record.update(status="error", error={"code": exc.code, "message": exc.message})
    except Exception as exc:  # a tool that broke: the model hears of it, the log keeps the trace
        log.warning("agent tool %s failed", call["name"], exc_info=True)
        record.update(status="error", error={"code": "tool_failed", "message": f"{type(exc).__name__}: {exc}"})
    record["ms"] = round((time.perf_counter() - started) * 1000, 2)
    content = record["result"] if record["status"] == "ok" else (
        f"Error ({record['error']['code']}): {record['error']['message']}")
    return ToolMessage(content=content, tool_call_id=call["id"] or "", name=call["name"],
                       status="success" if record["status"] == "ok" else "error"), record


def _answer_invalid(call: InvalidToolCall) -> tuple[ToolMessage, dict[str, Any]]:
    record = {"id": call["id"], "tool": call["name"], "arguments": call["args"], "status": "error",
              "error": {"code": "malformed_tool_call", "message": call["error"] or "the call could not be read"},
              "ms": 0.0}
    message = ToolMessage(content=f"Error (malformed_tool_call): {record['error']['message']}. Call the tool "
                                  "again with a JSON object of arguments.",
                          tool_call_id=call["id"] or "", name=call["name"] or "", status="error")
    return message, record


def run_agent(*, job_id: str, agent: dict[str, Any], system: str, prompt: dict[str, Any], input: str,
              caller: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    principal = caller_principal(caller)
    max_steps, budget = int(agent["max_steps"]), int(agent["token_budget"])
    params = agent.get("params") or {}
    tools = build_tools(agent["tools"], principal)
    model = ToolCallingChatModel(model_name=agent["model"], owner=principal.key_id, tenant=current_tenant(),
                                 temperature=float(params.get("temperature", 0.0)),
                                 max_tokens=int(params.get("max_tokens", 512)))
    bound = model.bind_tools(list(tools.values()))
    messages: list[BaseMessage] = [SystemMessage(system), HumanMessage(input)]
    steps: list[dict[str, Any]] = []
    totals = {"prompt": 0, "completion": 0, "total": 0, "budget": budget}
    cost = 0.0
    last_prompt_tokens = 0

    def stopped(code: str, message: str) -> RunStopped:
        return RunStopped(code, message, {"steps": steps, "tokens": totals, "prompt": prompt,
                                          "agent": agent["name"], "cost_usd": round(cost, 8)})

    for number in range(1, max_steps + 1):
        if stream and stop_requested(job_id):
            store.cancel_job(job_id, "the client disconnected from the stream")  # the row says cancelled
            raise stopped("cancelled", "the client disconnected from the stream")
        remaining = budget - totals["total"]
        # The next prompt holds the last one and more: if that alone does not fit, no call is sent.
        if remaining <= last_prompt_tokens:
            raise stopped("token_budget_exceeded", f"the token budget of {budget} is spent ({totals['total']} "
                          f"used; the next call needs more than the {remaining} left)")
        started = time.perf_counter()
        try:
            answer = bound.invoke(messages, max_tokens=min(int(params.get("max_tokens", 512)),
                                                          remaining - last_prompt_tokens))
        except ItemError as exc:  # rate_limited, budget_exceeded, openai_rejected, openai_not_configured
            raise JobInputError(exc.code, exc.message, {"status": MODEL_ERROR_STATUS.get(exc.code, 422),
                                                        "steps": steps, "prompt": prompt}) from None
        except OpenAIUnavailable as exc:
            raise JobInputError("model_unavailable", f"the agent's model failed: {exc}",
                                {"status": 502, "steps": steps, "prompt": prompt}) from None
        assert isinstance(answer, AIMessage)
        usage = answer.usage_metadata or {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        last_prompt_tokens = int(usage["input_tokens"])
        totals["prompt"] += int(usage["input_tokens"])
        totals["completion"] += int(usage["output_tokens"])
        totals["total"] += int(usage["total_tokens"])
        cost += float(answer.response_metadata.get("cost_usd") or 0.0)
        step: dict[str, Any] = {"step": number, "content": str(answer.content),
                                "tokens": {"prompt": int(usage["input_tokens"]),
                                           "completion": int(usage["output_tokens"]),
                                           "total": int(usage["total_tokens"]), "used": totals["total"]},
                                "model_ms": round((time.perf_counter() - started) * 1000, 2), "tool_calls": []}
        messages.append(answer)
        finished = not answer.tool_calls and not answer.invalid_tool_calls
        if totals["total"] > budget:
            steps.append(step)
            raise stopped("token_budget_exceeded", f"the token budget of {budget} is spent "
                          f"({totals['total']} used after step {number})")
        if not finished:
            for call in answer.tool_calls:
                reply, record = _call_tool(tools, call)
                messages.append(reply)
                step["tool_calls"].append(record)
            for invalid in answer.invalid_tool_calls:
                reply, record = _answer_invalid(invalid)
                messages.append(reply)
                step["tool_calls"].append(record)
        steps.append(step)
        store.set_progress(job_id, number, max_steps)
        if stream:
            publish_event(job_id, {"type": "step", **step})
        if finished:
            return {"agent": agent["name"], "model": agent["model"], "prompt": prompt, "answer": str(answer.content),
                    "steps": steps, "tokens": totals, "cost_usd": round(cost, 8),
                    "limits": {"max_steps": max_steps, "token_budget": budget}}
    raise stopped("step_limit_exceeded", f"the agent still called tools after {max_steps} steps (its step limit)")
