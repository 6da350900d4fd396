"""One chat turn: load the session's memory window, ask the model through LangChain, store the turn.

Turns of one session are serialised with a Redis lock, so every reply sees the turns before it and the
history stays in order even when a client sends several messages at once.
"""
from __future__ import annotations

import logging
import time
from functools import lru_cache
from typing import Any

import redis
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, trim_messages
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder

from cortex_tasks.core.chat import history
from cortex_tasks.core.chat.config import ChatConfig, chat_config
from cortex_tasks.core.errors import ItemError
from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.openai.config import CHAT_MODELS
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.tenancy import current_tenant
from cortex_tasks.core.validation.generation import generation_params
from cortex_tasks.runtime.chat.chat_models import CortexChatModel, LocalChatModel, OpenAIChatModel
from cortex_tasks.runtime.chat.token_counting import TokenCounter, fit_window, local_counter, openai_counter
from cortex_tasks.runtime.models.loaded import get_model
from cortex_tasks.runtime.openai.client import OpenAIUnavailable

log = logging.getLogger(__name__)

LOCAL_MODEL = "SmolLM2-135M-Instruct"
CHAT_MODEL_NAMES = (LOCAL_MODEL, *CHAT_MODELS)
LOCK_PREFIX = "cortex:chat:lock:"
PROMPT = ChatPromptTemplate.from_messages([
    ("system", "{system}"),
    MessagesPlaceholder("history"),
    ("human", "{message}"),
])


@lru_cache(maxsize=1)
def _redis() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url)


def memory_window(stored: list[history.StoredMessage], config: ChatConfig) -> list[BaseMessage]:
    """The earlier turns the model sees: the last `memory_turns` turns, then as many of them as fit in
    `memory_chars`, dropping the oldest first and never starting on an answer without its question."""
    messages: list[BaseMessage] = [HumanMessage(m.content) if m.role == "user" else AIMessage(m.content)
                                   for m in stored[-2 * config.memory_turns:]]
    if not messages:
        return []
    return trim_messages(messages, max_tokens=config.memory_chars, strategy="last", start_on="human",
                         token_counter=lambda batch: sum(len(str(m.content)) for m in batch))


def chat_model(model: str, params: dict[str, Any], owner: str) -> CortexChatModel:
    options = generation_params(params)
    settings = {"model_name": model, "max_tokens": options.max_tokens, "temperature": options.temperature,
                "top_p": options.top_p, "stop_sequences": list(options.stop)}
    if model in CHAT_MODELS:
        return OpenAIChatModel(owner=owner, tenant=current_tenant(), **settings)
    return LocalChatModel(**settings)


def token_budget(model: str, params: dict[str, Any], config: ChatConfig) -> tuple[TokenCounter, int]:
    """The model's own token counter, and how many tokens its whole prompt may take: CORTEX_CHAT_MEMORY_TOKENS,
    and for the local model also its context less the tokens it may generate."""
    if model in CHAT_MODELS:
        return openai_counter(model), config.memory_tokens
    generator: Any = get_model(model)
    room = generator.context_tokens - generation_params(params).max_tokens
    return local_counter(generator.tokenizer, model), min(config.memory_tokens, room)


def _answer(model: str, params: dict[str, Any], owner: str, system: str, window: list[BaseMessage],
            message: str, config: ChatConfig) -> tuple[BaseMessage, dict[str, Any]]:
    """The model's answer, with the window trimmed to the model's token budget as its tokenizer counts."""
    counter, budget = token_budget(model, params, config)
    try:
        kept, counted = fit_window(SystemMessage(system), window, HumanMessage(message), counter, budget)
    except ItemError as exc:
        raise JobInputError(exc.code, str(exc), exc.details) from exc
    answer = (PROMPT | chat_model(model, params, owner)).invoke({"system": system, "history": kept,
                                                                 "message": message})
    return answer, {"messages_in_window": len(kept), "prompt_tokens_counted": counted, "max_prompt_tokens": budget,
                    "tokenizer": counter.tokenizer, "exact": counter.exact}


def reply(*, job_id: str, session_id: str, owner: str, message: str, model: str | None = None,
          system: str | None = None, params: dict[str, Any] | None = None,
          prompt: dict[str, Any] | None = None) -> dict[str, Any]:
    config = chat_config()
    model = model or config.default_model
    params = params or {}
    if model not in CHAT_MODEL_NAMES:
        raise JobInputError("unknown_model", f"model {model!r} cannot chat", {"valid": list(CHAT_MODEL_NAMES)})
    lock = _redis().lock(LOCK_PREFIX + session_id, timeout=config.lock_wait_seconds + 60,
                         blocking_timeout=config.lock_wait_seconds)
    if not lock.acquire():
        raise JobInputError("session_busy", "an earlier message of this session is still being answered")
    try:
        started = time.perf_counter()
        window = memory_window(history.recent_messages(session_id, 2 * config.memory_turns), config)
        system_text = system or config.default_system
        answered_by: dict[str, Any] = {"name": model}
        try:
            try:
                answer, fitted = _answer(model, params, owner, system_text, window, message, config)
            except OpenAIUnavailable as exc:
                log.warning("chat model %s failed (%s); answering with %s", model, exc, LOCAL_MODEL)
                # Trimmed again: the local model's tokenizer and context are not OpenAI's.
                answer, fitted = _answer(LOCAL_MODEL, params, owner, system_text, window, message, config)
                answered_by = {"name": LOCAL_MODEL, "fallback_from": model, "fallback_reason": str(exc)}
        except ItemError as exc:  # rate_limited, budget_exceeded, openai_rejected, input_too_long: the caller's to know
            raise JobInputError(exc.code, str(exc)) from exc
        text = str(answer.content)
        history.append_turn(session_id, owner, message, text, answered_by["name"], job_id)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            pass  # it expired: the turn is stored anyway
    metadata = answer.response_metadata
    usage = answer.usage_metadata or {}
    result: dict[str, Any] = {
        "session_id": session_id,
        "reply": text,
        "model": answered_by,
        "memory": {**fitted, "memory_turns": config.memory_turns, "memory_chars": config.memory_chars,
                   "memory_tokens": config.memory_tokens},
        "tokens": {"prompt": usage.get("input_tokens", 0), "completion": usage.get("output_tokens", 0)},
        "cached": bool(metadata.get("cached", False)),
        "timings": {"model_ms": round((time.perf_counter() - started) * 1000, 2)},
    }
    if "usage" in metadata:
        result["cost_usd"] = metadata["usage"]["cost_usd"]
    if prompt is not None:
        result["prompt"] = prompt  # the exact prompt version the system text was rendered from
    return result
