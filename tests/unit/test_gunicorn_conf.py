"""The gateway's connection balancing between gunicorn processes (gunicorn_conf.BalancedThreadWorker):
when a process leaves a new connection to a peer, and that it never leaves it for long."""
from __future__ import annotations

import ctypes
import multiprocessing
import time
from types import SimpleNamespace

import pytest

import gunicorn_conf
from gunicorn_conf import DEFER_POLL_SECONDS, DEFER_SECONDS, NO_PROCESS, BalancedThreadWorker


@pytest.fixture()
def table(monkeypatch):
    connections = multiprocessing.RawArray(ctypes.c_long, [NO_PROCESS] * 4)
    monkeypatch.setattr(gunicorn_conf, "_connections", connections)
    return connections


def worker(slot: int | None, held: int) -> SimpleNamespace:
    return SimpleNamespace(slot=slot, nr_conns=held, _deferring_since=0.0, _last_deferral=0.0)


def leaves(process: SimpleNamespace) -> bool:
    return BalancedThreadWorker._leave_to_peer(process)


def test_a_process_with_more_connections_leaves_a_new_one_to_its_peer(table):
    table[0], table[1] = 5, 3
    assert leaves(worker(0, 5))
    assert not leaves(worker(1, 3))  # the peer with fewer takes it
    table[1] = 5
    assert not leaves(worker(0, 5))  # equal shares: whoever is first


def test_free_slots_and_unbalanced_workers_do_not_hold_back_a_connection(table):
    table[0], table[2] = 4, NO_PROCESS  # slot 2: a worker that exited
    assert not leaves(worker(0, 4))  # no live peer
    assert not leaves(worker(None, 9))  # a worker without a slot accepts as plain gthread does


def test_a_deferred_connection_is_taken_after_the_defer_time(table):
    table[0], table[1] = 6, 1
    process = worker(0, 6)
    started = time.monotonic()
    while leaves(process):  # the same connection asked again and again while the peer does not take it
        time.sleep(DEFER_POLL_SECONDS)
        assert time.monotonic() - started < 20 * DEFER_SECONDS
    assert time.monotonic() - started >= DEFER_SECONDS * 0.9
    time.sleep(20 * DEFER_POLL_SECONDS)
    assert leaves(process)  # a later connection starts a new wait
