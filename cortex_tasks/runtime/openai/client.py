"""Calls to the OpenAI API (chat completions, embeddings) with everything a paid external API needs:
the shared rate limits, retries with backoff honouring Retry-After on 429/5xx, the monthly budget,
cost accounting per key, and a cache for deterministic chat calls (temperature 0), so a repeated request
costs nothing and says it was cached.

Errors: `OpenAIUnavailable` (the API kept failing: callers fall back to the local model),
ItemError subclasses for what the caller must be told (`rate_limited`, `budget_exceeded`,
`openai_rejected`: the API refused this request, e.g. a prompt over the model's context).
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import openai

from cortex_tasks.core.cache.keys import cache_key
from cortex_tasks.core.cache.service import MISSING, get_cache
from cortex_tasks.core.errors import ItemError
from cortex_tasks.core.openai import usage as usage_ledger
from cortex_tasks.core.openai.config import OpenAIConfig, openai_config
from cortex_tasks.core.openai.rate_limit import RateLimited, estimate_tokens, shared_limiter

log = logging.getLogger(__name__)

CACHE_NAMESPACE = "openai_chat"
CACHE_FORMAT = "1"


class OpenAIUnavailable(Exception):
    """The API failed (5xx, 429 or no connection) after every retry."""


class OpenAINotConfigured(ItemError):
    def __init__(self) -> None:
        super().__init__("openai_not_configured", "OpenAI is not configured on this worker "
                                                  "(CORTEX_OPENAI_API_KEY is not set)")


class OpenAIRateLimited(ItemError):
    def __init__(self, exc: RateLimited) -> None:
        super().__init__("rate_limited", str(exc))
        self.retry_after = exc.retry_after


class OpenAIBudgetExceeded(ItemError):
    def __init__(self, exc: usage_ledger.BudgetExceeded) -> None:
        super().__init__("budget_exceeded", str(exc))


class OpenAIRejected(ItemError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__("openai_rejected", f"OpenAI refused the request ({status}): {message}")


RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError, openai.APITimeoutError)


@dataclass(frozen=True)
class ChatOptions:
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()


def retry_after_seconds(exc: Exception) -> float | None:
    """The server's Retry-After (or OpenAI's retry-after-ms) on an error response, if it sent one."""
    response = getattr(exc, "response", None)
    if response is None:
        return None
    headers = response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw:
            try:
                return max(0.0, float(raw) * scale)
            except ValueError:
                continue  # an HTTP date: use our own backoff instead
    return None


class OpenAIService:
    def __init__(self, config: OpenAIConfig) -> None:
        if not config.configured:
            raise OpenAINotConfigured()
        self.config = config
        self.client = openai.OpenAI(api_key=config.api_key, base_url=config.base_url,
                                    timeout=config.timeout_seconds, max_retries=0)  # we retry ourselves
        self.limiter = shared_limiter()

    def _call(self, model: str, estimated_tokens: int, request: Any) -> Any:
        """One API request under the rate limits and the budget, retried on transient failures."""
        try:
            usage_ledger.check_budget(self.config)
        except usage_ledger.BudgetExceeded as exc:
            raise OpenAIBudgetExceeded(exc) from None
        attempt = 0
        while True:
            try:
                window = self.limiter.acquire(estimated_tokens)
            except RateLimited as exc:
                usage_ledger.record_failure(model, "rate_limited")
                raise OpenAIRateLimited(exc) from None
            try:
                response = request()
            except RETRYABLE as exc:
                reason = "http_429" if isinstance(exc, openai.RateLimitError) else type(exc).__name__
                usage_ledger.record_failure(model, reason)
                if attempt >= self.config.max_retries:
                    raise OpenAIUnavailable(f"OpenAI failed {attempt + 1} times, last: {_describe(exc)}") from exc
                delay = retry_after_seconds(exc)
                if delay is None:
                    delay = self.config.backoff_seconds * 2 ** attempt * (0.5 + random.random())
                delay = min(delay, self.config.max_retry_after_seconds)
                log.warning("OpenAI %s failed (%s); retry %d in %.2fs", model, _describe(exc), attempt + 1, delay)
                time.sleep(delay)
                attempt += 1
                continue
            except openai.APIStatusError as exc:  # 4xx other than 429: retrying cannot help
                usage_ledger.record_failure(model, f"http_{exc.status_code}")
                raise OpenAIRejected(exc.status_code, _describe(exc)) from None
            actual = getattr(getattr(response, "usage", None), "total_tokens", None)
            if actual is not None:
                self.limiter.correct(window, estimated_tokens, int(actual))
            return response

    def chat(self, model: str, messages: list[dict[str, str]], options: ChatOptions, owner: str,
             source: str = "predict", tenant: str | None = None) -> dict[str, Any]:
        """One chat completion: {"text", "finish_reason", "prompt_tokens", "generated_tokens", "usage", "cached"}."""
        cache = get_cache()
        key = None
        if options.temperature == 0 and cache.enabled:
            # Per tenant: a conversation is the tenant's own, and a hit (free, `cached`) would tell another
            # tenant that someone asked the same.
            described = json.dumps({"max_tokens": options.max_tokens, "stop": list(options.stop),
                                    "messages": messages, "tenant": tenant}, sort_keys=True, separators=(",", ":"))
            key = cache_key(CACHE_NAMESPACE, model, CACHE_FORMAT, self.config.base_url, described)
            hit = cache.lookup([key])[0]
            if hit is not MISSING:
                usage_ledger.record(usage_ledger.Usage(owner, model, "chat", 0, 0, cached=True, source=source,
                                                       tenant=tenant))
                return {**hit, "usage": {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0,
                                         "saved_usd": hit["usage"]["cost_usd"]}, "cached": True}
        kwargs: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": options.max_tokens,
                                  "temperature": options.temperature}
        if options.temperature > 0 and options.top_p < 1.0:
            kwargs["top_p"] = options.top_p
        if options.stop:
            kwargs["stop"] = list(options.stop)
        estimated = estimate_tokens([m["content"] for m in messages], options.max_tokens)
        response = self._call(model, estimated, lambda: self.client.chat.completions.create(**kwargs))
        choice = response.choices[0]
        prompt_tokens = int(response.usage.prompt_tokens) if response.usage else 0
        completion_tokens = int(response.usage.completion_tokens) if response.usage else 0
        cost = usage_ledger.record(usage_ledger.Usage(owner, model, "chat", prompt_tokens, completion_tokens,
                                                      source=source, tenant=tenant))
        result = {"text": choice.message.content or "", "finish_reason": choice.finish_reason or "stop",
                  "generated_tokens": completion_tokens, "prompt_tokens": prompt_tokens,
                  "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                            "cost_usd": cost},
                  "cached": False}
        if key is not None:
            cache.store([key], [result])
        return result

    def chat_tools(self, model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]], options: ChatOptions,
                   owner: str, source: str = "agent", tenant: str | None = None) -> dict[str, Any]:
        """One chat completion that may call tools (agents): {"content", "tool_calls" (as the API sent them,
        arguments unparsed), "finish_reason", "prompt_tokens", "completion_tokens", "cost_usd"}. Under the same
        rate limits, retries, budget and cost records as `chat`; never cached, as a tool's result may change
        between two identical requests."""
        kwargs: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": options.max_tokens,
                                  "temperature": options.temperature}
        if tools:
            kwargs["tools"] = tools
        estimated = estimate_tokens([json.dumps(message.get("content") or "") for message in messages]
                                    + [json.dumps(tools)], options.max_tokens)
        response = self._call(model, estimated, lambda: self.client.chat.completions.create(**kwargs))
        if not response.choices:
            raise OpenAIUnavailable(f"{model} answered with no choice")
        choice = response.choices[0]
        prompt_tokens = int(response.usage.prompt_tokens) if response.usage else 0
        completion_tokens = int(response.usage.completion_tokens) if response.usage else 0
        cost = usage_ledger.record(usage_ledger.Usage(owner, model, "chat", prompt_tokens, completion_tokens,
                                                      source=source, tenant=tenant))
        calls = [{"id": call.id, "type": "function",
                  "function": {"name": call.function.name, "arguments": call.function.arguments}}
                 for call in (choice.message.tool_calls or []) if getattr(call, "function", None) is not None]
        return {"content": choice.message.content or "", "tool_calls": calls,
                "finish_reason": choice.finish_reason or "stop", "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens, "cost_usd": cost}

    def embed(self, model: str, texts: list[str], owner: str, tenant: str | None = None) -> list[list[float]]:
        estimated = estimate_tokens(texts)
        response = self._call(model, estimated, lambda: self.client.embeddings.create(model=model, input=texts))
        vectors = [item.embedding for item in sorted(response.data, key=lambda item: item.index)]
        if len(vectors) != len(texts):
            raise OpenAIUnavailable(f"OpenAI returned {len(vectors)} embeddings for {len(texts)} texts")
        prompt_tokens = int(response.usage.prompt_tokens) if response.usage else 0
        usage_ledger.record(usage_ledger.Usage(owner, model, "embed", prompt_tokens, 0, tenant=tenant))
        return vectors


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    message = getattr(exc, "message", None) or str(exc)
    return f"{status} {message}" if status else f"{type(exc).__name__}: {message}"


@lru_cache(maxsize=1)
def openai_service() -> OpenAIService:
    """One client per process (its HTTP connection pool is thread-safe)."""
    return OpenAIService(openai_config())
