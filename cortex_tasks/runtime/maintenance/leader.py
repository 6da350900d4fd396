"""One Beat sends the schedule, however many run: the others wait on a Redis lock and take over.

Each Beat (`celery -A cortex_tasks beat`, celeryconfig's `beat_scheduler`) ticks only while it holds the
lock `cortex:beat:leader` in Redis (REDIS_URL, not the broker: it is there whatever the broker is). The
holder renews it every third of its TTL (CORTEX_BEAT_LOCK_TTL); a Beat that dies without letting go
(SIGKILL, its host gone) stops renewing, the key expires within the TTL and a standby, which tries every
second, takes it and starts sending. A Beat stopped cleanly lets go at once.

Why not celery-redbeat: it keeps the schedule itself in Redis and replaces the scheduler, so Beat's
entries (beat_schedule.py) would live in two places, and it only knows a Redis broker URL for its lock.
What is needed is the lock alone, around Celery's own PersistentScheduler; redis-py's Lock (a SET NX PX
with a token, renewed by `reacquire`) is the maintained part, the rest is this subclass.

A Beat that takes over runs at once any entry whose time passed while no Beat was leading (Celery's own
catch-up for a missed run): the entries are idempotent housekeeping, so an entry the dead leader had
just sent may run twice, and none is skipped.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

import redis
from celery.beat import PersistentScheduler
from redis.exceptions import LockError

from cortex_tasks.core.settings import get_settings

log = logging.getLogger(__name__)

LOCK_KEY = "cortex:beat:leader"
# A standby looks for a free lock this often (a SET NX: cheap), so it takes over within TTL + 1 s.
STANDBY_POLL_SECONDS = 1.0


def renew_interval(ttl_seconds: float) -> float:
    """How often the leader renews: three chances to renew before the lock would expire."""
    return ttl_seconds / 3


class LeaderScheduler(PersistentScheduler):
    """Celery's PersistentScheduler that sends due entries only while it holds the leader lock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = get_settings()
        self.lock_ttl = settings.beat_lock_ttl_seconds
        self.renew_every = renew_interval(self.lock_ttl)
        self.standby_poll = min(STANDBY_POLL_SECONDS, self.renew_every)
        # A bounded socket timeout: a Beat that cannot reach Redis must notice before its lock expires.
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=max(0.5, self.renew_every / 2),
                                      socket_connect_timeout=max(0.5, self.renew_every / 2))
        # thread_local=False: the token is read by whichever thread ticks (Beat's service thread).
        self.leader_lock = client.lock(LOCK_KEY, timeout=self.lock_ttl, thread_local=False)
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.leading = False
        self._renew_at = 0.0
        self._said_standby = False
        super().__init__(*args, **kwargs)
        # Beat sleeps what tick() returns, up to max_interval (300 s by default): never longer than a renewal.
        self.max_interval = min(self.max_interval, self.renew_every)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self._hold_lock():
            return self.standby_poll
        return min(super().tick(*args, **kwargs), self.renew_every)

    def _hold_lock(self) -> bool:
        now = time.monotonic()
        try:
            if self.leading:
                if now < self._renew_at:
                    return True
                self.leader_lock.reacquire()  # raises LockNotOwnedError when the key expired meanwhile
            elif not self.leader_lock.acquire(blocking=False):
                if not self._said_standby:
                    log.info("beat: standby, another Beat holds the leader lock %s; taking over if it lapses "
                             "(TTL %ss)", LOCK_KEY, self.lock_ttl)
                    self._said_standby = True
                return False
            else:
                log.info("beat: leading as %s (lock %s, TTL %ss, renewed every %ss)", self.identity, LOCK_KEY,
                         self.lock_ttl, round(self.renew_every, 3))
        except LockError:
            log.warning("beat: lost the leader lock (not renewed within its TTL); standby")
            return self._stand_by()
        except redis.RedisError as exc:
            # Without Redis this Beat cannot know whether another one took over: it stops sending.
            log.warning("beat: cannot reach Redis for the leader lock (%s); not sending until it can", exc)
            return self._stand_by()
        self.leading = True
        self._said_standby = False
        self._renew_at = now + self.renew_every
        return True

    def _stand_by(self) -> bool:
        self.leading = False
        self._said_standby = False
        return False

    def close(self) -> None:
        super().close()
        if self.leading:
            # A clean stop hands over at once instead of after the TTL.
            try:
                self.leader_lock.release()
            except (LockError, redis.RedisError):
                pass
            self.leading = False
