"""The per-process gate of core/dependencies.py: a failed dependency is refused at once, one background
probe decides when it is back, and the errors that mean "the service is away" are told from the others."""
from __future__ import annotations

import threading
import time

import psycopg
import pytest
import redis
import sqlalchemy.exc

from cortex_tasks.core.dependencies import DATABASE, REDIS, DependencyUnavailable, Gate, failed_dependency


def test_a_tripped_gate_refuses_at_once_until_its_probe_answers() -> None:
    answers = threading.Event()
    probes: list[float] = []

    def probe() -> None:
        probes.append(time.monotonic())
        if not answers.is_set():
            raise ConnectionError("still down")

    gate = Gate(REDIS, probe, retry_seconds=0.05)
    gate.check()  # open: nothing happens
    gate.trip(ConnectionError("refused"))
    with pytest.raises(DependencyUnavailable) as refused:
        gate.check()
    assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "1"
    assert refused.value.details == {"dependency": "redis"}
    assert probes == []  # no probe before the retry interval
    answers.set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.06)
        try:
            gate.check()  # past the interval: starts the probe (and still refuses this call)
            break
        except DependencyUnavailable:
            continue
    assert not gate.failed and probes


def test_which_errors_mean_a_dependency_is_away() -> None:
    assert failed_dependency(redis.ConnectionError("refused")) == REDIS
    assert failed_dependency(redis.TimeoutError("slow")) == REDIS
    assert failed_dependency(redis.ResponseError("WRONGTYPE")) is None
    assert failed_dependency(psycopg.OperationalError("the database did not answer within 1.5s")) == DATABASE
    assert failed_dependency(sqlalchemy.exc.TimeoutError("pool")) == DATABASE
    deadlock = psycopg.errors.DeadlockDetected("deadlock")
    assert failed_dependency(deadlock) is None  # the request's own trouble, not an outage
    assert failed_dependency(ValueError("x")) is None
