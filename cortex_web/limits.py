"""Rate limiting (token buckets in Redis) and the in-flight bound on prediction requests.

Every call that creates work takes a token from its API key's bucket; prediction calls also take one
from the bucket of each (key, model) they use, so that one model cannot use up a caller's whole budget.
The tier on the key (settings.rate_limit_tiers) sizes the buckets. Reads (status, progress, results) are
not limited: clients poll them.

Cost per request: one Redis round trip (EVALSHA of a Lua script that refills and takes from every bucket
atomically, with Redis's clock, so all gateway processes share the buckets); none at all for a key whose
tier is unlimited. If Redis cannot be reached the request is let through (logged): the limiter must not
turn a Redis blip into an outage of its own.

Responses of limited routes carry `X-RateLimit-Limit` (the bucket's capacity, i.e. the burst size),
`X-RateLimit-Remaining` (whole tokens left) and `X-RateLimit-Reset` (seconds until the bucket is full
again), for the tightest bucket of the request; a 429 adds `Retry-After` (seconds until a token is back).

Usage on a route, below `require` (so a 403 costs no token):

    @bp.post("/predict")
    @require(PREDICT)
    @limit_prediction
    def predict(): ...

`limit_model_work` is the same without the in-flight bound (for calls that only queue work, such as
batch submit), and `limit_work` limits per key only (training, vector writes, documents, chat, ...).
`limit_by_address(tier)` limits a route that needs no key (POST /oauth/token) per client address.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

import redis
from flask import Flask, current_app, g, request
from werkzeug.wrappers import Response

from cortex_tasks.core import redis_clock
from cortex_tasks.core.catalogue import TASKS
from cortex_tasks.core.settings import RateTier, Settings, get_settings
from cortex_web.audit import AUDIT_MARK, MODEL_ACCESS_MARK
from cortex_web.auth import current_principal
from cortex_web.errors import ApiError
from cortex_web.metrics import INFLIGHT_REJECTED, RATE_LIMITED
from cortex_web.request_body import json_body

log = logging.getLogger(__name__)
View = TypeVar("View", bound=Callable[..., Any])
BUCKET_KEY_PREFIX = "cortex:ratelimit:"
MAX_MODEL_BUCKETS = 8  # a pipeline has at most 8 steps
OVERLOAD_RETRY_AFTER_SECONDS = 1

# KEYS: the buckets. ARGV: per bucket, its refill rate (tokens per second) and capacity.
# Returns {allowed (0|1), whole tokens left, capacity, ms until full, ms until a token is back}, the last
# three for the tightest bucket. A refused request takes nothing and writes nothing.
TOKEN_BUCKET_LUA = redis_clock.LUA_NOW + """
local tokens, allowed, wait = {}, 1, 0
for i = 1, #KEYS do
  local rate, capacity = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local state = redis.call('HMGET', KEYS[i], 't', 'ts')
  local t = tonumber(state[1])
  if t == nil then
    t = capacity
  else
    t = math.min(capacity, t + math.max(0, now - tonumber(state[2])) * rate)
  end
  tokens[i] = t
  if t < 1 then
    allowed = 0
    wait = math.max(wait, (1 - t) / rate)
  end
end
local remaining, limit, reset = -1, 0, 0
for i = 1, #KEYS do
  local rate, capacity = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local t = tokens[i]
  if allowed == 1 then
    t = t - 1
    redis.call('HSET', KEYS[i], 't', tostring(t), 'ts', tostring(now))
    redis.call('PEXPIRE', KEYS[i], math.ceil((capacity - t) / rate * 1000) + 1000)
  end
  if remaining < 0 or t < remaining then
    remaining, limit, reset = t, capacity, (capacity - t) / rate
  end
end
return {allowed, math.floor(remaining), limit, math.ceil(reset * 1000), math.ceil(wait * 1000)}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    tier: str
    limit: int
    remaining: int
    reset_seconds: float
    retry_after_seconds: float

    def headers(self) -> dict[str, str]:
        headers = {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(max(0, self.remaining)),
                   "X-RateLimit-Reset": str(math.ceil(self.reset_seconds))}
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_seconds)))
        return headers


class RateLimiter:
    def __init__(self, client: redis.Redis, tiers: dict[str, RateTier | None]) -> None:
        self._tiers = tiers
        self._script = client.register_script(TOKEN_BUCKET_LUA)  # EVALSHA; loaded again only if Redis lost it
        self._last_failure_log = 0.0

    def tier(self, name: str) -> RateTier | None:
        # A key whose tier was removed from the configuration falls back to the default tier.
        return self._tiers[name] if name in self._tiers else self._tiers.get("default")

    def take(self, key_id: str, tier_name: str, models: Iterable[str] = ()) -> Decision | None:
        """One token from the key's bucket and from each (key, model) bucket; None when unlimited."""
        tier = self.tier(tier_name)
        if tier is None:
            return None
        keys = [f"{BUCKET_KEY_PREFIX}{key_id}"]
        args: list[float] = [tier.requests_per_minute / 60, tier.burst_size]
        if tier.model_requests_per_minute is not None and tier.model_burst_size is not None:
            for model in models:
                keys.append(f"{BUCKET_KEY_PREFIX}{key_id}:m:{model}")
                args += [tier.model_requests_per_minute / 60, tier.model_burst_size]
        try:
            allowed, remaining, limit, reset_ms, wait_ms = self._script(keys=keys, args=args)
        except redis.RedisError as exc:
            now = time.monotonic()
            if now - self._last_failure_log > 10:
                self._last_failure_log = now
                log.warning("rate limiter: Redis unavailable, letting requests through: %s", exc)
            return None
        return Decision(bool(allowed), tier_name, int(limit), int(remaining), reset_ms / 1000, wait_ms / 1000)


class ConcurrencyGate:
    """At most `bound` prediction requests in flight in this process; a request waits up to `timeout`
    seconds for a slot (CORTEX_MAX_CONCURRENT_REQUESTS, CORTEX_QUEUE_TIMEOUT)."""

    def __init__(self, bound: int, timeout: float) -> None:
        self.bound, self.timeout = bound, timeout
        self._slots = threading.BoundedSemaphore(bound)

    def enter(self) -> bool:
        return self._slots.acquire(timeout=self.timeout) if self.timeout > 0 else self._slots.acquire(blocking=False)

    def leave(self) -> None:
        self._slots.release()


def inflight_bound(settings: Settings) -> int:
    """The process's in-flight prediction slots: CORTEX_MAX_CONCURRENT_REQUESTS, but fewer than its threads.
    With more slots than threads (100 against 64 by default) the bound never refused anything: the
    excess waited in gunicorn's queue until the clients timed out, and status polls and /health waited
    behind them. An eighth of the threads (at least 2) stays free for everything else."""
    reserve = max(2, settings.web_threads // 8)
    return max(1, min(settings.max_concurrent_requests, settings.web_threads - reserve))


def init_app(app: Flask, client: redis.Redis, settings: Settings) -> None:
    app.extensions["cortex_rate_limiter"] = RateLimiter(client, settings.rate_limit_tiers)
    app.extensions["cortex_concurrency"] = ConcurrencyGate(inflight_bound(settings),
                                                           settings.queue_timeout_seconds)

    @app.after_request
    def _rate_limit_headers(response: Response) -> Response:
        decision = g.get("rate_decision")
        if decision is not None:
            response.headers.update(decision.headers())
        return response


def _model_name(spec: Any) -> str | None:
    """The model a request (or pipeline step) names, else its task's default model."""
    if not isinstance(spec, dict):
        return None
    model = spec.get("model")
    if isinstance(model, str) and model:
        return model.partition("@")[0][:128]
    task = TASKS.get(spec.get("task")) if isinstance(spec.get("task"), str) else None
    return task.default_model if task else None


def requested_models() -> list[str]:
    """Models named by the JSON body (a pipeline's steps, or `model`/`task`). The body is decoded once
    for the request (json_body caches it for the view)."""
    try:
        body = json_body(get_settings().max_json_depth)
    except ApiError:
        return []  # the view answers with this error
    if not isinstance(body, dict):
        return []
    steps = body.get("steps")
    specs = steps[:MAX_MODEL_BUCKETS] if isinstance(steps, list) else [body]
    return list(dict.fromkeys(name for name in map(_model_name, specs) if name))


def _take_token(models: list[str], bucket: tuple[str, str] | None = None) -> None:
    """One token from the caller's buckets: the key's (and its models'), or `bucket` (id, tier) if given."""
    if bucket is None:
        principal = current_principal()
        bucket = (principal.key_id, principal.tier)
    decision = current_app.extensions["cortex_rate_limiter"].take(bucket[0], bucket[1], models)
    if decision is None:
        return
    g.rate_decision = decision
    if not decision.allowed:
        g.rate_limited = True
        RATE_LIMITED.labels(decision.tier).inc()
        raise ApiError(429, "rate_limited",
                       f"Rate limit of the {decision.tier!r} tier exceeded; retry in "
                       f"{max(1, math.ceil(decision.retry_after_seconds))} s.",
                       {"tier": decision.tier, "limit": decision.limit,
                        "retry_after_seconds": round(decision.retry_after_seconds, 3)},
                       headers=decision.headers())


def limit_work(view: View) -> View:
    """Rate-limit a call that creates work, per API key."""
    @wraps(view)
    def limited(*args: Any, **kwargs: Any) -> Any:
        _take_token([])
        return view(*args, **kwargs)

    return limited  # type: ignore[return-value]


def limit_by_address(tier: Callable[[], str]) -> Callable[[View], View]:
    """Rate-limit a route that needs no key, per client address, with the buckets of the tier that
    `tier()` names when the request comes."""
    def decorate(view: View) -> View:
        @wraps(view)
        def limited(*args: Any, **kwargs: Any) -> Any:
            _take_token([], (f"addr:{request.remote_addr or 'unknown'}", tier()))
            return view(*args, **kwargs)

        return limited  # type: ignore[return-value]

    return decorate


def _releasing(body: Iterable[bytes], release: Callable[[], None]) -> Iterator[bytes]:
    """A streamed body that frees its slot when it ends or the client goes away (the server closes it)."""
    try:
        yield from body
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
        release()


def limit_model_work(view: View) -> View:
    """Rate-limit per key and per (key, model) a call that queues work for a model (batch submit); the
    models are remembered for the audit log's model_access events."""
    @wraps(view)
    def limited(*args: Any, **kwargs: Any) -> Any:
        models = requested_models()
        g.audit_models = models
        _take_token(models)
        return view(*args, **kwargs)

    setattr(limited, AUDIT_MARK, MODEL_ACCESS_MARK)
    return limited  # type: ignore[return-value]


def limit_prediction(view: View) -> View:
    """Rate-limit per key and per (key, model), then hold one of the process's in-flight slots while the
    request runs (a streamed response holds it until the stream ends). The models are remembered for the
    audit log's model_access events."""
    @wraps(view)
    def limited(*args: Any, **kwargs: Any) -> Any:
        models = requested_models()
        g.audit_models = models
        _take_token(models)
        gate: ConcurrencyGate = current_app.extensions["cortex_concurrency"]
        if not gate.enter():
            INFLIGHT_REJECTED.inc()
            raise ApiError(503, "overloaded",
                           f"This gateway has {gate.bound} prediction requests in flight; retry shortly.",
                           {"max_concurrent_requests": gate.bound},
                           headers={"Retry-After": str(OVERLOAD_RETRY_AFTER_SECONDS)})
        try:
            response = current_app.make_response(view(*args, **kwargs))
        except BaseException:
            gate.leave()
            raise
        if response.is_streamed:
            response.response = _releasing(response.response, gate.leave)
        else:
            gate.leave()
        return response

    setattr(limited, AUDIT_MARK, MODEL_ACCESS_MARK)
    return limited  # type: ignore[return-value]
