"""Security alerts: violations from one key or one IP that reach a threshold within a window.

The windows are sliding, kept in Redis sorted sets so that every gateway process counts into the same
window. An alert fires once when a subject's count crosses its threshold, and again only after the count
has fallen below it (the window moved on) and crossed it once more, so a sustained attack is one alert
per window rather than one per request.
"""
from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass

import redis

from cortex_tasks.core.settings import AlertRule

WINDOW_KEY_PREFIX = "cortex:audit:window:"


@dataclass(frozen=True)
class FiredAlert:
    type: str
    subject: str  # "key:<key id>" or "ip:<address>"
    count: int
    threshold: int
    window_seconds: float


class AlertTracker:
    def __init__(self, client: redis.Redis, rules: tuple[AlertRule, ...]) -> None:
        self._client, self._rules = client, rules

    def observe(self, violations: Counter[str], now: float | None = None) -> list[FiredAlert]:
        """Count `violations` (subject -> how many since the last call) into every rule's window, in one
        transaction (one round trip), and return the alerts whose threshold was crossed."""
        if not violations or not self._rules:
            return []
        now = time.time() if now is None else now
        pipe = self._client.pipeline(transaction=True)
        plan = []
        for subject, new in violations.items():
            for rule in self._rules:
                key = f"{WINDOW_KEY_PREFIX}{rule.type}:{subject}"
                # Past the threshold the exact count no longer matters: bound what one flood writes.
                added = min(new, rule.threshold)
                pipe.zremrangebyscore(key, "-inf", now - rule.window_seconds)
                pipe.zcard(key)
                pipe.zadd(key, {f"{now:.6f}:{uuid.uuid4().hex[:8]}": now for _ in range(added)})
                pipe.expire(key, int(rule.window_seconds) + 1)
                plan.append((subject, rule, added))
        replies = pipe.execute()
        fired = []
        for index, (subject, rule, added) in enumerate(plan):
            before = replies[index * 4 + 1]
            after = before + added
            if before < rule.threshold <= after:
                fired.append(FiredAlert(rule.type, subject, after, rule.threshold, rule.window_seconds))
        return fired
