"""Requests-per-minute and tokens-per-minute limits on outbound OpenAI calls, shared by every worker.

A fixed one-minute window per limit in Redis, checked and counted in one Lua script so that concurrent
workers cannot both take the last slot. A call that does not fit waits for the next window when it opens
soon enough, otherwise fails with `rate_limited`. Tokens are counted from an estimate before the call and
corrected with the response's `usage` after it.
"""
from __future__ import annotations

import time
from functools import lru_cache

import redis

from cortex_tasks.core import redis_clock
from cortex_tasks.core.openai.config import openai_config
from cortex_tasks.core.settings import get_settings

KEY_PREFIX = "cortex:openai:window:"
# KEYS: requests window, tokens window. ARGV: request limit, token limit, tokens wanted, window seconds.
# Returns 1 when admitted (both counters taken), 0 when either limit would be exceeded (nothing taken).
_ADMIT = """
local requests = tonumber(redis.call('GET', KEYS[1]) or '0')
local tokens = tonumber(redis.call('GET', KEYS[2]) or '0')
if requests + 1 > tonumber(ARGV[1]) then return 0 end
if tokens > 0 and tokens + tonumber(ARGV[3]) > tonumber(ARGV[2]) then return 0 end
redis.call('INCR', KEYS[1])
redis.call('INCRBY', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4] * 2)
redis.call('EXPIRE', KEYS[2], ARGV[4] * 2)
return 1
"""
WINDOW_SECONDS = 60


class RateLimited(Exception):
    def __init__(self, retry_after: float, limits: dict[str, int]) -> None:
        super().__init__(f"the OpenAI rate limits of this deployment are used up for this minute "
                         f"({limits['requests_per_minute']} requests, {limits['tokens_per_minute']} tokens); "
                         f"retry in {retry_after:.0f}s")
        self.retry_after = retry_after


@lru_cache(maxsize=1)
def _client() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url)


class OutboundRateLimiter:
    def __init__(self, client: redis.Redis, requests_per_minute: int, tokens_per_minute: int,
                 max_wait_seconds: float, prefix: str = KEY_PREFIX, window_seconds: int = WINDOW_SECONDS) -> None:
        self.client, self.prefix, self.window_seconds = client, prefix, window_seconds
        self.requests_per_minute, self.tokens_per_minute = requests_per_minute, tokens_per_minute
        self.max_wait_seconds = max_wait_seconds
        self._admit = client.register_script(_ADMIT)

    def _keys(self, window: int) -> list[str]:
        return [f"{self.prefix}{window}:requests", f"{self.prefix}{window}:tokens"]

    def acquire(self, tokens: int) -> int:
        """Take one request and `tokens` from the current window, waiting for the next one if allowed.
        Returns the window taken from (pass it to `correct`). A single call larger than the whole token
        limit is admitted alone in an empty window rather than never."""
        deadline = time.monotonic() + self.max_wait_seconds
        while True:
            # The window by Redis's clock (core/redis_clock.py): by each worker's own, workers minutes apart
            # counted into different windows, and the deployment sent up to twice its limit a minute.
            now = redis_clock.now(self.client)
            window = int(now // self.window_seconds)
            if self._admit(keys=self._keys(window), args=[self.requests_per_minute, self.tokens_per_minute,
                                                           max(0, tokens), self.window_seconds]):
                return window
            retry_after = (window + 1) * self.window_seconds - now
            if time.monotonic() + retry_after > deadline:
                raise RateLimited(retry_after, {"requests_per_minute": self.requests_per_minute,
                                                "tokens_per_minute": self.tokens_per_minute})
            time.sleep(retry_after + 0.01)

    def correct(self, window: int, estimated: int, actual: int) -> None:
        """Replace the estimate with the tokens the API reports it used."""
        if actual != estimated:
            self.client.incrby(self._keys(window)[1], actual - estimated)


def shared_limiter() -> OutboundRateLimiter:
    config = openai_config()
    return OutboundRateLimiter(_client(), config.requests_per_minute, config.tokens_per_minute,
                               config.max_rate_wait_seconds)


def estimate_tokens(texts: list[str], max_output_tokens: int = 0) -> int:
    """About four characters per token for English; the response's usage corrects it."""
    return sum(len(text) for text in texts) // 4 + 1 + max_output_tokens
