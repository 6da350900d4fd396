"""A LangChain chat model with tool calling over Cortex's OpenAI backend (runtime/openai/client.py), so an
agent's model calls share the deployment's rate limits, retries, monthly budget and per-key cost records
with every other OpenAI call. Any OpenAI-compatible server that implements tool calling answers it
(CORTEX_OPENAI_BASE_URL: OpenAI, vLLM, llama.cpp, Ollama).

Tool calls come back as LangChain's `AIMessage.tool_calls`; a call whose arguments are not a JSON object is
kept as an `invalid_tool_call` (LangChain's own parser decides), so the agent loop can answer it with a tool
error instead of failing.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.messages.tool import InvalidToolCall, ToolCall
from langchain_core.output_parsers.openai_tools import make_invalid_tool_call, parse_tool_call
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

ROLES = {"human": "user", "system": "system"}


def openai_message(message: BaseMessage) -> dict[str, Any]:
    """A LangChain message in the chat completions API's shape."""
    if isinstance(message, ToolMessage):
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": str(message.content)}
    if isinstance(message, AIMessage):
        calls = [{"id": call["id"], "type": "function",
                  "function": {"name": call["name"], "arguments": json.dumps(call["args"])}}
                 for call in message.tool_calls]
        # A malformed call is sent back as the model wrote it: its tool error answers that call's id.
        calls += [{"id": call["id"], "type": "function",
                   "function": {"name": call["name"] or "", "arguments": call["args"] or ""}}
                  for call in message.invalid_tool_calls]
        shaped: dict[str, Any] = {"role": "assistant", "content": str(message.content) or None}
        if calls:
            shaped["tool_calls"] = calls
        return shaped
    return {"role": ROLES.get(message.type, "user"), "content": str(message.content)}


def parsed_tool_calls(raw_calls: list[dict[str, Any]]) -> tuple[list[ToolCall], list[InvalidToolCall]]:
    valid: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for raw in raw_calls:
        try:
            call = parse_tool_call(raw, return_id=True)
        except OutputParserException as exc:
            invalid.append(make_invalid_tool_call(raw, f"the arguments are not valid JSON: {exc}".split("\n")[0]))
            continue
        if call is None:
            continue
        if not isinstance(call.get("args"), dict):
            invalid.append(make_invalid_tool_call(raw, "the arguments must be a JSON object"))
            continue
        valid.append(ToolCall(name=call["name"], args=call["args"], id=call.get("id"), type="tool_call"))
    return valid, invalid


class ToolCallingChatModel(BaseChatModel):
    model_name: str
    owner: str  # the key billed for the calls
    # The job's tenant, named here: LangChain may call the model on a thread of its own, outside the scope.
    tenant: str | None = None
    max_tokens: int = 512
    temperature: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "cortex-openai-tools"

    def bind_tools(self, tools: Sequence[dict[str, Any] | type | Any | BaseTool],
                   **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        return self.bind(tools=[convert_to_openai_tool(tool) for tool in tools], **kwargs)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        # The OpenAI SDK loads on first use: most workers never call it.
        from cortex_tasks.runtime.openai.client import ChatOptions, openai_service

        options = ChatOptions(max_tokens=int(kwargs.get("max_tokens") or self.max_tokens),
                              temperature=self.temperature, stop=tuple(stop or ()))
        answer = openai_service().chat_tools(self.model_name, [openai_message(m) for m in messages],
                                             kwargs.get("tools") or [], options, self.owner, tenant=self.tenant)
        valid, invalid = parsed_tool_calls(answer["tool_calls"])
        prompt, completion = answer["prompt_tokens"], answer["completion_tokens"]
        message = AIMessage(
            content=answer["content"], tool_calls=valid, invalid_tool_calls=invalid,
            response_metadata={"model_name": self.model_name, "finish_reason": answer["finish_reason"],
                               "cost_usd": answer["cost_usd"]},
            usage_metadata={"input_tokens": prompt, "output_tokens": completion,
                            "total_tokens": prompt + completion})
        return ChatResult(generations=[ChatGeneration(message=message)])
