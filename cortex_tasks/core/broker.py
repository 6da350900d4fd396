"""The broker of the user's choice: Redis (the default, REDIS_URL) or RabbitMQ (CORTEX_BROKER_URL=amqp://...).

Celery carries the messages either way; what differs is what Cortex does beside Celery:

- Priorities. Cortex's steps are Celery's Redis convention, 0 the highest (core/queues.py). RabbitMQ serves
  the *highest* number first, from queues declared with `x-max-priority` (celeryconfig's
  `task_queue_max_priority`), so a message to RabbitMQ carries `MAX_STEP - step` (`native_priority`,
  applied to every publish by core/publishing.py).
- Queue depth. Redis: the lengths of kombu's per-priority lists. RabbitMQ: a passive `queue.declare`,
  which answers a queue's ready message count without creating or changing anything.
- The age of the oldest waiting message (load shedding by age, priority aging): Redis lets Cortex look at
  the tail of a list; AMQP has no way to look at a waiting message without taking it (a get and a
  requeue would mark it redelivered and reorder the priorities), so with RabbitMQ shedding by age is off
  (shedding by depth stays) and aging is off: RabbitMQ's priority queues always serve higher priorities
  first, so a sustained flood of high-priority work can delay low-priority work until it ebbs.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import redis
from kombu import Connection

from cortex_tasks.core.queues import PRIORITY_STEPS, QUEUE_NAMES
from cortex_tasks.core.settings import get_settings

log = logging.getLogger(__name__)

MAX_STEP = PRIORITY_STEPS[-1]
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://")
AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")


def is_redis_url(url: str) -> bool:
    return url.startswith(REDIS_SCHEMES)


def is_amqp_url(url: str) -> bool:
    return url.startswith(AMQP_SCHEMES)


def native_priority(step: int | None, driver_type: str, default_step: int) -> int:
    """The priority a message carries on this broker, for Cortex's step (0 the highest)."""
    step = default_step if step is None else max(0, min(MAX_STEP, int(step)))
    return MAX_STEP - step if driver_type == "amqp" else step


class AmqpQueueDepths:
    """Ready-message counts of RabbitMQ queues by passive declares, over one connection per process
    (threads share it under a lock; a declare is one round trip)."""

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self._url, self._timeout = url, timeout
        self._connection: Connection | None = None
        self._channel: Any = None
        self._lock = threading.Lock()

    def _open_channel(self) -> Any:
        if self._connection is None:
            self._connection = Connection(self._url, connect_timeout=self._timeout,
                                          transport_options={"read_timeout": self._timeout})
        if self._channel is None:
            self._channel = self._connection.default_channel
        return self._channel

    def depth(self, queue: str) -> int:
        with self._lock:
            try:
                return int(self._open_channel().queue_declare(queue=queue, passive=True).message_count)
            except Exception as exc:  # noqa: BLE001  (a missing queue closes the channel; an outage the connection)
                self._reset()
                if getattr(exc, "code", None) == 404:  # not declared yet: nothing waits in it
                    return 0
                raise

    def depths(self, queues: Iterable[str]) -> dict[str, int]:
        return {queue: self.depth(queue) for queue in queues}

    def _reset(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            try:
                connection.release()
            except Exception:  # noqa: BLE001  (already broken: nothing to give back)
                pass


_amqp_depths: dict[str, AmqpQueueDepths] = {}
_amqp_lock = threading.Lock()
_broker_clients: dict[str, redis.Redis] = {}


def amqp_depths(url: str) -> AmqpQueueDepths:
    with _amqp_lock:
        if url not in _amqp_depths:
            _amqp_depths[url] = AmqpQueueDepths(url)
        return _amqp_depths[url]


def broker_probe() -> Callable[[], object] | None:
    """A round trip to the broker for /ready, or None when the broker is REDIS_URL's Redis (checked as Redis)."""
    settings = get_settings()
    url = settings.celery_broker_url
    if url == settings.redis_url:
        return None
    if not settings.broker_is_redis:
        return lambda: amqp_depths(url).depth(QUEUE_NAMES[0])  # a passive declare: answered by a live broker
    return lambda: redis_holding_queues(redis.Redis.from_url(settings.redis_url)).ping()


def redis_holding_queues(client: redis.Redis) -> redis.Redis:
    """The Redis whose lists are the queues: `client` (REDIS_URL's) unless CORTEX_BROKER_URL names another
    Redis. Only for a Redis broker (sentinel:// is kombu's to resolve: its lists are read through REDIS_URL)."""
    settings = get_settings()
    url = settings.celery_broker_url
    if url == settings.redis_url or not url.startswith(("redis://", "rediss://", "unix://")):
        return client
    with _amqp_lock:
        if url not in _broker_clients:
            _broker_clients[url] = redis.Redis.from_url(url, socket_timeout=2, health_check_interval=30)
        return _broker_clients[url]
