"""Calls to the OpenAI API (chat completions, embeddings, audio transcriptions, image generations) with everything a paid external API needs:
the shared rate limits, retries with backoff honouring Retry-After on 429/5xx, the monthly budget,
cost accounting per key, and a cache for deterministic chat calls (temperature 0), so a repeated request
costs nothing and says it was cached.

Errors: `OpenAIUnavailable` (the API kept failing: callers fall back to the local model),
ItemError subclasses for what the caller must be told (`rate_limited`, `budget_exceeded`,
`openai_rejected`: the API refused this request, e.g. a prompt over the model's context).
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import openai

from cortex_tasks.core.cache.keys import cache_key
from cortex_tasks.core.cache.service import MISSING, get_cache
from cortex_tasks.core.errors import ItemError
from cortex_tasks.core.openai import usage as usage_ledger
from cortex_tasks.core.openai.config import (
    OpenAIConfig,
    image_cost_usd,
    openai_config,
    transcription_cost_usd,
)
from cortex_tasks.core.openai.rate_limit import RateLimited, estimate_tokens, shared_limiter
from cortex_tasks.core.validation.media import ImageParams, TranscriptionParams

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


    def transcribe(self, model: str, audio: bytes, filename: str, options: TranscriptionParams, owner: str,
                   tenant: str | None = None) -> dict[str, Any]:
        """One recording to text: {"text", "language", "duration", "segments", "usage", "cached"}. The answer is
        cached per tenant on the recording's hash and the options (temperature 0: Whisper is then
        deterministic), and a hit is recorded as a free call."""
        cache = get_cache()
        key = None
        if options.temperature == 0 and cache.enabled:
            described = json.dumps({"audio": hashlib.sha256(audio).hexdigest(), "language": options.language,
                                    "prompt": options.prompt, "tenant": tenant}, sort_keys=True)
            key = cache_key(CACHE_NAMESPACE + ":transcribe", model, CACHE_FORMAT, self.config.base_url, described)
            hit = cache.lookup([key])[0]
            if hit is not MISSING:
                return self._cached_hit(hit, owner, model, "transcribe", tenant)
        kwargs: dict[str, Any] = {"model": model, "file": (filename, audio), "response_format": "verbose_json",
                                  "temperature": options.temperature}
        if options.language:
            kwargs["language"] = options.language
        if options.prompt:
            kwargs["prompt"] = options.prompt
        response = self._call(model, 1, lambda: self.client.audio.transcriptions.create(**kwargs))
        duration = float(getattr(response, "duration", 0.0) or 0.0)
        cost = usage_ledger.record(usage_ledger.Usage(owner, model, "transcribe", 0, 0, tenant=tenant,
                                                      priced_usd=transcription_cost_usd(model, duration, self.config)))
        segments = [{"id": int(_field(segment, "id", index)), "start": float(_field(segment, "start", 0.0)),
                     "end": float(_field(segment, "end", 0.0)), "text": str(_field(segment, "text", ""))}
                    for index, segment in enumerate(getattr(response, "segments", None) or [])]
        result = {"text": response.text, "language": getattr(response, "language", None), "duration": duration,
                  "segments": segments, "usage": {"audio_seconds": duration, "cost_usd": cost}, "cached": False}
        if key is not None:
            cache.store([key], [result])
        return result

    def generate_images(self, model: str, prompt: str, options: ImageParams, owner: str,
                        tenant: str | None, store_image: Callable[[bytes], dict[str, Any]]) -> dict[str, Any]:
        """Images for one prompt, each handed to `store_image` (which keeps it and says where): {"images",
        "size", "quality", "usage", "cached"}. Cached per tenant on the prompt and options: the same request
        again answers the same stored images, free."""
        cache = get_cache()
        key = None
        if cache.enabled:
            described = json.dumps({"prompt": prompt, "size": options.size, "quality": options.quality,
                                    "n": options.n, "style": options.style, "tenant": tenant}, sort_keys=True)
            key = cache_key(CACHE_NAMESPACE + ":images", model, CACHE_FORMAT, self.config.base_url, described)
            hit = cache.lookup([key])[0]
            if hit is not MISSING:
                return self._cached_hit(hit, owner, model, "image", tenant)
        kwargs: dict[str, Any] = {"model": model, "prompt": prompt, "n": options.n, "size": options.size,
                                  "quality": options.quality}
        if model == "dall-e-3":  # gpt-image-1 always answers base64 and refuses the parameter
            kwargs["response_format"] = "b64_json"
        if options.style:
            kwargs["style"] = options.style
        response = self._call(model, estimate_tokens([prompt]), lambda: self.client.images.generate(**kwargs))
        images = []
        for item in response.data or []:
            if not item.b64_json:
                raise OpenAIUnavailable("the images API answered without image data (b64_json)")
            stored = store_image(base64.b64decode(item.b64_json))
            if getattr(item, "revised_prompt", None):
                stored["revised_prompt"] = item.revised_prompt
            images.append(stored)
        if not images:
            raise OpenAIUnavailable("the images API answered no image")
        cost = usage_ledger.record(usage_ledger.Usage(
            owner, model, "image", 0, 0, tenant=tenant,
            priced_usd=image_cost_usd(model, options.quality, options.size, len(images), self.config)))
        result = {"images": images, "size": options.size, "quality": options.quality,
                  "usage": {"images": len(images), "cost_usd": cost}, "cached": False}
        if key is not None:
            cache.store([key], [result])
        return result

    @staticmethod
    def _cached_hit(hit: dict[str, Any], owner: str, model: str, kind: str, tenant: str | None) -> dict[str, Any]:
        usage_ledger.record(usage_ledger.Usage(owner, model, kind, 0, 0, cached=True, tenant=tenant))
        return {**hit, "usage": {**hit["usage"], "cost_usd": 0.0, "saved_usd": hit["usage"]["cost_usd"]},
                "cached": True}


def _field(item: Any, name: str, default: Any) -> Any:
    """A field of a response object or of a plain dict (OpenAI-compatible servers differ)."""
    value = item.get(name, default) if isinstance(item, dict) else getattr(item, name, default)
    return default if value is None else value


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    message = getattr(exc, "message", None) or str(exc)
    return f"{status} {message}" if status else f"{type(exc).__name__}: {message}"


@lru_cache(maxsize=1)
def openai_service() -> OpenAIService:
    """One client per process (its HTTP connection pool is thread-safe)."""
    return OpenAIService(openai_config())
