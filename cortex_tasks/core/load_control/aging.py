"""Priority aging: waiting work climbs to a higher priority so interactive traffic cannot starve it.

A message in a low-priority list (step > normal) that has waited `max_age` seconds moves to the normal
list; one in the normal range (steps 1..4) that has waited twice that moves to the highest list, where it
is served in arrival order with interactive work. Runs from Beat every few seconds; each move is atomic
(one Lua script per queue), and kombu's list layout is unchanged: only the list a message waits in.
"""
from __future__ import annotations

import time

import redis
from prometheus_client import Counter

from cortex_tasks.core.queues import PRIORITY_CLASSES, PRIORITY_STEPS

PROMOTED = Counter("cortex_priority_promotions_total", "Messages promoted by priority aging", ["queue", "to"])

_PROMOTE = """
local now, max_age, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
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
    now = time.time()
    low_lists = [_list_name(queue, step) for step in PRIORITY_STEPS if step > normal]
    normal_lists = [_list_name(queue, step) for step in PRIORITY_STEPS if highest < step <= normal]
    to_normal = int(script(keys=[*low_lists, _list_name(queue, normal)], args=[now, max_age, limit]))
    to_high = int(script(keys=[*normal_lists, _list_name(queue, highest)], args=[now, 2 * max_age, limit]))
    if to_normal:
        PROMOTED.labels(queue, "normal").inc(to_normal)
    if to_high:
        PROMOTED.labels(queue, "high").inc(to_high)
    return {"to_normal": to_normal, "to_high": to_high}
