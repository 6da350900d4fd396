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


def _response(sock, method: str = "GET"):
    from gunicorn.config import Config

    request = SimpleNamespace(version=(1, 1), method=method, should_close=lambda: False, headers=[])
    return gunicorn_conf.OneWriteResponse(request, sock, Config())


class RecordingSocket:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(data)


def test_a_response_goes_out_in_one_write_with_its_head():
    from gunicorn.http import wsgi

    assert wsgi.Response is gunicorn_conf.OneWriteResponse  # what gunicorn's request handling creates
    sock = RecordingSocket()
    response = _response(sock)
    response.start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "11")])
    response.write(b'{"ok": true}')  # one byte past the announced length: cut, as gunicorn cuts it
    response.close()
    assert len(sock.writes) == 1
    head, _, body = sock.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 11" in head
    assert body == b'{"ok": true'


def test_a_chunked_response_is_written_as_gunicorn_writes_it():
    sock = RecordingSocket()
    response = _response(sock)
    response.start_response("200 OK", [("Content-Type", "text/event-stream")])
    assert response.chunked
    response.write(b"data: 1\n\n")
    response.write(b"data: 2\n\n")
    response.close()
    assert sock.writes[0].endswith(b"\r\n\r\n") and b"Transfer-Encoding: chunked" in sock.writes[0]
    assert sock.writes[1:] == [b"9\r\ndata: 1\n\n\r\n", b"9\r\ndata: 2\n\n\r\n", b"0\r\n\r\n"]


def test_the_heartbeat_is_written_at_most_once_a_second(monkeypatch):
    beats: list[float] = []
    monkeypatch.setattr(gunicorn_conf.ThreadWorker, "notify", lambda self: beats.append(time.monotonic()))
    process = BalancedThreadWorker.__new__(BalancedThreadWorker)  # no process started
    process._last_heartbeat = 0.0
    for _ in range(100):
        process.notify()
    assert len(beats) == 1
    process._last_heartbeat -= gunicorn_conf.HEARTBEAT_SECONDS  # a second later
    process.notify()
    assert len(beats) == 2
