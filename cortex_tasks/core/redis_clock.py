"""One clock for the times that one process writes and another compares: Redis's.

The gateway's and the workers' hosts may disagree by minutes (an NTP daemon that stopped, a VM resumed
from a snapshot). A time one process stamps (a message's `enqueued_at`, the score of an unacknowledged
message, a circuit breaker's bucket, a cache entry's expiry) and another process compares with its own
clock is then off by the skew: with a 0.5 s queue timeout, a gateway three minutes behind made every
other gateway shed all low-priority work. Every such time is therefore taken from Redis's clock, the one
clock every process already shares.

Asking Redis (`TIME`) on every stamp would add a round trip to the hot paths, so each process measures
the offset between its own clock and Redis's once every REFRESH_SECONDS and adds it to its local time
(the error is half a round trip: well under a millisecond on a LAN). Where the comparison runs inside
Redis (a Lua script), the script reads `TIME` itself instead (LUA_NOW) (core/load_control/aging.py,
core/openai/rate_limit.py, core/cache/layers.py, cortex_web/limits.py).

With Redis away the last offset measured is used (none yet: this host's clock), and the next measurement
is tried only after RETRY_SECONDS, so a missing Redis costs a stamp at most one short timeout now and then.
"""
from __future__ import annotations

import threading
import time
from functools import lru_cache

import redis

REFRESH_SECONDS = 30.0
# The first lines of a Lua script that compares times inside Redis: `now`, in epoch seconds, by Redis's clock.
LUA_NOW = """local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
"""
RETRY_SECONDS = 5.0
TIMEOUT_SECONDS = 0.5

_offsets: dict[tuple[object, ...], tuple[float, float]] = {}  # server -> (offset, monotonic time measured)
_lock = threading.Lock()


def _server(client: redis.Redis) -> tuple[object, ...]:
    kwargs = client.connection_pool.connection_kwargs
    return kwargs.get("host"), kwargs.get("port"), kwargs.get("path")


def measure_offset(client: redis.Redis) -> float:
    """Redis's clock minus this host's, in seconds (one TIME round trip)."""
    before = time.time()
    seconds, microseconds = client.time()
    after = time.time()
    return seconds + microseconds / 1e6 - (before + after) / 2


def now(client: redis.Redis) -> float:
    """Epoch seconds by the clock of the Redis server `client` talks to."""
    server = _server(client)
    known = _offsets.get(server)
    moment = time.monotonic()
    if known is None or moment - known[1] > REFRESH_SECONDS:
        offset = known[0] if known else 0.0
        checked = moment - REFRESH_SECONDS + RETRY_SECONDS  # on failure: try again in RETRY_SECONDS
        try:
            offset, checked = measure_offset(client), moment
        except redis.RedisError:
            pass
        with _lock:
            _offsets[server] = (offset, checked)
        return time.time() + offset
    return time.time() + known[0]


def _short_client(url: str) -> redis.Redis:
    # Short timeouts of its own: this client only reads TIME, and must not hold up its caller for long.
    return redis.Redis.from_url(url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS)


@lru_cache(maxsize=1)
def _shared_client() -> redis.Redis:
    from cortex_tasks.core.settings import get_settings

    return _short_client(get_settings().redis_url)


def shared_now() -> float:
    """Epoch seconds by the clock of REDIS_URL's server: what access tokens are issued and checked by."""
    return now(_shared_client())


@lru_cache(maxsize=1)
def _broker_client() -> redis.Redis:
    from cortex_tasks.core.broker import redis_holding_queues
    from cortex_tasks.core.settings import get_settings

    settings = get_settings()
    client = _shared_client()
    if not settings.broker_is_redis or redis_holding_queues(client) is client:
        return client
    return _short_client(settings.celery_broker_url)


def broker_now() -> float:
    """Epoch seconds by the clock of the Redis that holds the queues (REDIS_URL's with RabbitMQ as the
    broker): what a message's `enqueued_at` is stamped with."""
    return now(_broker_client())
