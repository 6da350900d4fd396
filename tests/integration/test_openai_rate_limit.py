"""The outbound OpenAI limits against real Redis: shared windows, waiting briefly, failing clearly."""
from __future__ import annotations

import os
import time
import uuid

import pytest
import redis

from cortex_tasks.core.openai.rate_limit import OutboundRateLimiter, RateLimited


def limiter(requests: int, tokens: int, max_wait: float) -> OutboundRateLimiter:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    return OutboundRateLimiter(client, requests, tokens, max_wait, prefix=f"test:openai:{uuid.uuid4().hex}:")


def test_requests_per_minute_are_refused_with_retry_after():
    shared = limiter(requests=3, tokens=10_000, max_wait=0)
    for _ in range(3):
        shared.acquire(10)
    with pytest.raises(RateLimited) as refused:
        shared.acquire(10)
    assert 0 < refused.value.retry_after <= 60
    assert "3 requests" in str(refused.value)


def test_tokens_per_minute_count_the_actual_usage():
    shared = limiter(requests=100, tokens=1000, max_wait=0)
    window = shared.acquire(100)
    shared.correct(window, 100, 950)  # the response said it used more than estimated
    with pytest.raises(RateLimited):
        shared.acquire(100)


def test_two_limiters_on_one_redis_share_the_window():
    first = limiter(requests=2, tokens=10_000, max_wait=0)
    second = OutboundRateLimiter(first.client, 2, 10_000, 0, prefix=first.prefix)
    first.acquire(1)
    second.acquire(1)
    with pytest.raises(RateLimited):
        first.acquire(1)


def test_waits_for_the_next_window_when_allowed():
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    # One-second windows so the test is quick; production windows are a minute.
    shared = OutboundRateLimiter(client, 1, 10_000, max_wait_seconds=2, prefix=f"test:openai:{uuid.uuid4().hex}:",
                                 window_seconds=1)
    first = shared.acquire(1)
    started = time.monotonic()
    second = shared.acquire(1)
    assert second == first + 1 and time.monotonic() - started <= 1.1
