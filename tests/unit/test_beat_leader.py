"""The shipped Beat leader lock: its TTL, renewal and standby polling fit together (the two-Beat
integration test, tests/integration/test_beat_leader.py, runs with a 3 s TTL)."""
from __future__ import annotations

import celeryconfig
from cortex_tasks.core.settings import Settings
from cortex_tasks.runtime.maintenance.leader import STANDBY_POLL_SECONDS, LeaderScheduler, renew_interval


def test_every_beat_uses_the_leader_scheduler():
    module, _, name = celeryconfig.beat_scheduler.partition(":")
    assert (module, name) == (LeaderScheduler.__module__, LeaderScheduler.__name__)


def test_shipped_lock_ttl_renewal_and_standby_poll_are_sane(monkeypatch):
    monkeypatch.delenv("CORTEX_BEAT_LOCK_TTL", raising=False)
    ttl = Settings().beat_lock_ttl_seconds
    # Long enough that a busy Beat (a slow tick, a garbage collection, a Redis failover of a few seconds)
    # keeps its lock; short enough that the schedule stops for under a minute when the leader's host dies.
    assert 10 <= ttl <= 60
    renew = renew_interval(ttl)
    # Renewed three times per TTL: two renewals may fail before the lock lapses.
    assert renew * 3 <= ttl
    # A standby notices a lapsed lock within a small fraction of the TTL.
    assert STANDBY_POLL_SECONDS <= ttl / 10


def test_lock_ttl_reads_durations(monkeypatch):
    monkeypatch.setenv("CORTEX_BEAT_LOCK_TTL", "1m")
    assert Settings().beat_lock_ttl_seconds == 60
