"""Load shedding: when a queue is deeper than a bound, or its
oldest message has waited longer than the queue timeout, new low-priority work is refused with a 503 and
Retry-After instead of piling up. Interactive (normal/high) work is never shed here.

The queue's state is read from Redis at most every `refresh_seconds` per process. A message's age comes
from the `enqueued_at` header Cortex puts on every message it sends. With RabbitMQ as the broker only the
depth can be read (a passive declare), so shedding by age is off there (core/broker.py says why).
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import redis
from prometheus_client import Counter

from cortex_tasks.core.broker import amqp_depths, redis_holding_queues
from cortex_tasks.core.queues import PRIORITY_STEPS
from cortex_tasks.core.settings import get_settings

SHED_REQUESTS = Counter("cortex_shed_requests_total", "Requests refused by load shedding", ["queue", "reason"])
# Each queue's depth and oldest age are reported by the gateway's /metrics, read at scrape time
# (cortex_web/metrics.py QueueCollector), not as last seen here: a queue nobody submits to would
# otherwise show the age it had at its last submission.


@dataclass(frozen=True)
class SheddingPolicy:
    max_depth: int = 500
    max_age_seconds: float = 0.5  # load_balancing.queue_timeout
    refresh_seconds: float = 0.2


@dataclass(frozen=True)
class QueueLoad:
    depth: int
    oldest_age: float


def _message_age(raw: bytes | None, now: float) -> float:
    if not raw:
        return 0.0
    try:
        enqueued_at = json.loads(raw)["headers"].get("enqueued_at")
        return max(0.0, now - float(enqueued_at)) if enqueued_at else 0.0
    except (ValueError, KeyError, TypeError, AttributeError):
        return 0.0


def read_queue_load(client: redis.Redis, queue: str) -> QueueLoad:
    return read_queue_loads(client, [queue])[queue]


def read_queue_loads(client: redis.Redis, queues: list[str] | tuple[str, ...]) -> dict[str, QueueLoad]:
    """Each queue's depth (over its priority sub-lists) and its oldest message's age, in one round trip."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for step in PRIORITY_STEPS:
            name = queue if step == 0 else f"{queue}:{step}"
            pipe.llen(name)
            pipe.lindex(name, -1)  # kombu pushes on the left and pops on the right: the tail is the oldest
    # Ages by Redis's clock, as `enqueued_at` is stamped (core/redis_clock.py): this host's clock may be
    # minutes off the publisher's, which made every waiting message look minutes old (or never old).
    pipe.time()
    *replies, (seconds, microseconds) = pipe.execute()
    now = seconds + microseconds / 1e6
    width = 2 * len(PRIORITY_STEPS)
    loads = {}
    for index, queue in enumerate(queues):
        part = replies[index * width:(index + 1) * width]
        loads[queue] = QueueLoad(sum(part[0::2]), max((_message_age(raw, now) for raw in part[1::2]), default=0.0))
    return loads


class LoadShedder:
    def __init__(self, client: redis.Redis, policy: SheddingPolicy) -> None:
        settings = get_settings()
        self._amqp_url = None if settings.broker_is_redis else settings.celery_broker_url
        self.client = client if self._amqp_url is not None else redis_holding_queues(client)
        self.policy = policy
        self._loads: dict[str, tuple[float, QueueLoad]] = {}
        self._lock = threading.Lock()

    def load(self, queue: str) -> QueueLoad:
        now = time.monotonic()
        cached = self._loads.get(queue)
        if cached and cached[0] > now:
            return cached[1]
        try:
            if self._amqp_url is not None:
                load = QueueLoad(amqp_depths(self._amqp_url).depth(queue), 0.0)
            else:
                load = read_queue_load(self.client, queue)
        except redis.RedisError:
            load = QueueLoad(0, 0.0)
        except Exception:  # noqa: BLE001  (the AMQP broker away: not a reason to refuse work, as with Redis)
            load = QueueLoad(0, 0.0)
        with self._lock:
            self._loads[queue] = (now + self.policy.refresh_seconds, load)
        return load

    def refusal(self, queue: str, priority_class: str) -> tuple[str, int] | None:
        """(reason, retry-after seconds) if this request should be shed, else None."""
        if priority_class != "low":
            return None
        load = self.load(queue)
        if load.depth > self.policy.max_depth:
            SHED_REQUESTS.labels(queue, "depth").inc()
            return f"queue {queue!r} holds {load.depth} messages (bound {self.policy.max_depth})", 5
        if load.oldest_age > self.policy.max_age_seconds:
            SHED_REQUESTS.labels(queue, "age").inc()
            return ((f"the oldest message in queue {queue!r} has waited {load.oldest_age:.1f}s "
                     f"(queue timeout {self.policy.max_age_seconds}s)"), max(1, int(load.oldest_age)))
        return None
