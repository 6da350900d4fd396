"""Priority aging: waiting work climbs to a higher priority so interactive traffic cannot starve it.

A message in a low-priority list (step > normal) that has waited `max_age` seconds moves to the normal
list; one in the normal range (steps 1..4) that has waited twice that moves to the highest list, where it
is served in arrival order with interactive work. Each move is atomic (one Lua script per queue), and
kombu's list layout is unchanged: only the list a message waits in.

It runs every few seconds in Beat's own process (`start_aging_in_beat`, connected in beat_schedule.py),
not as a task Beat sends: a task every 5 s was most of what Flower listed (59 of 98 tasks in a minute) and
buried the real work. Every Beat runs it, the standbys too (runtime/maintenance/leader.py): the moves are
atomic and idempotent, so two Beats only run them twice. With RabbitMQ as the broker it is off (core/broker.py).
"""
from __future__ import annotations

import logging
import threading

import redis
from prometheus_client import Counter

from cortex_tasks.core import redis_clock
from cortex_tasks.core.broker import redis_holding_queues
from cortex_tasks.core.queues import GPU, NLP, PRIORITY_CLASSES, PRIORITY_STEPS
from cortex_tasks.core.settings import get_settings

log = logging.getLogger(__name__)
AGED_QUEUES = (GPU, NLP)
AGING_INTERVAL_SECONDS = 5.0

PROMOTED = Counter("cortex_priority_promotions_total", "Messages promoted by priority aging", ["queue", "to"])

# `now` is Redis's clock, as `enqueued_at` is stamped (core/redis_clock.py), not the caller's: Beat's
# host may be minutes off the publishers'.
_PROMOTE = redis_clock.LUA_NOW + """
local max_age, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local moved = 0
for i = 1, #KEYS - 1 do
  local source, target = KEYS[i], KEYS[#KEYS]
  while moved < limit do
    local raw = redis.call('LINDEX', source, -1)
    if not raw then break end
    local ok, message = pcall(cjson.decode, raw)
    local enqueued = ok and type(message) == 'table' and type(message.headers) == 'table'
      and tonumber(message.headers.enqueued_at)
    if not enqueued or now - enqueued < max_age then break end
    redis.call('RPOP', source)
    redis.call('RPUSH', target, raw)
    moved = moved + 1
  end
end
return moved
"""


def _list_name(queue: str, step: int) -> str:
    return queue if step == 0 else f"{queue}:{step}"


def promote_aged(client: redis.Redis, queue: str, max_age: float, limit: int = 1000) -> dict[str, int]:
    script = client.register_script(_PROMOTE)
    normal, highest = PRIORITY_CLASSES["normal"], PRIORITY_STEPS[0]
    low_lists = [_list_name(queue, step) for step in PRIORITY_STEPS if step > normal]
    normal_lists = [_list_name(queue, step) for step in PRIORITY_STEPS if highest < step <= normal]
    to_normal = int(script(keys=[*low_lists, _list_name(queue, normal)], args=[max_age, limit]))
    to_high = int(script(keys=[*normal_lists, _list_name(queue, highest)], args=[2 * max_age, limit]))
    if to_normal:
        PROMOTED.labels(queue, "normal").inc(to_normal)
    if to_high:
        PROMOTED.labels(queue, "high").inc(to_high)
    return {"to_normal": to_normal, "to_high": to_high}


def age_queues_forever(client: redis.Redis, max_age: float, stop: threading.Event,
                       interval: float = AGING_INTERVAL_SECONDS) -> None:
    while not stop.wait(interval):
        try:
            for queue in AGED_QUEUES:
                promote_aged(client, queue, max_age)
        except redis.RedisError as exc:  # Redis restarting: try again next round
            log.warning("priority aging skipped a round: %s", exc)


def start_aging_in_beat(**_: object) -> threading.Event:
    """celery.signals.beat_init: age the queues from a thread of the Beat process. Returns its stop event."""
    settings = get_settings()
    stop = threading.Event()
    if not settings.broker_is_redis:
        log.info("priority aging is off: the broker is not Redis (RabbitMQ serves its priority queues "
                 "itself, and a waiting message's age cannot be read there; see core/broker.py)")
        return stop
    queues = redis_holding_queues(redis.Redis.from_url(settings.redis_url))
    threading.Thread(target=age_queues_forever, name="priority-aging", daemon=True,
                     args=(queues, settings.priority_aging_seconds, stop)).start()
    return stop
