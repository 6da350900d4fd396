"""The gateway's gunicorn worker (gunicorn_conf.BalancedThreadWorker): when a process leaves a new connection
to a peer, and that it never leaves it for long; a keep-alive connection's next requests on the same
thread; its responses in one write; its heartbeat."""
from __future__ import annotations

import ctypes
import multiprocessing
import socket
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


class _Handled:
    """Stands in for gthread's handling of one request: reads one line from the connection's socket and
    answers it; keep-alive unless the line says close."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def __call__(self, process, conn):
        line = b""
        while not line.endswith(b"\n"):
            line += conn.sock.recv(1)
        self.lines.append(line)
        return line != b"close\n", conn


class _Deadline:
    def __init__(self) -> None:
        self.started = 0

    def start_request(self, grace: float) -> None:
        self.started += 1


def _keepalive_process(monkeypatch, waiting: int = 0, alive: bool = True):
    handled = _Handled()
    monkeypatch.setattr(gunicorn_conf.ThreadWorker, "handle", lambda process, conn: handled(process, conn))
    process = BalancedThreadWorker.__new__(BalancedThreadWorker)  # no process started
    process.alive = alive
    process.tpool = SimpleNamespace(waiting=lambda: waiting)
    ours, client = socket.socketpair()
    deadline = _Deadline()
    conn = SimpleNamespace(sock=ours, parser=SimpleNamespace(unreader=SimpleNamespace(sock=deadline)))
    return process, conn, client, handled, deadline


def test_the_next_request_on_a_connection_is_handled_by_the_same_thread(monkeypatch):
    process, conn, client, handled, deadline = _keepalive_process(monkeypatch)
    client.sendall(b"one\ntwo\n")
    started = time.monotonic()
    keepalive, _ = process.handle(conn)
    assert handled.lines == [b"one\n", b"two\n"]  # both in this call: no trip through the event loop
    assert keepalive  # no third request came: the connection goes back to the event loop, open...
    assert time.monotonic() - started >= gunicorn_conf.NEXT_REQUEST_WAIT_SECONDS * 0.9  # ...after the wait
    assert deadline.started == 1  # the second request got a read deadline of its own


def test_a_connection_goes_back_to_the_event_loop_when_another_waits_for_a_thread(monkeypatch):
    process, conn, client, handled, _ = _keepalive_process(monkeypatch, waiting=1)
    client.sendall(b"one\ntwo\n")
    assert process.handle(conn) == (True, conn)
    assert handled.lines == [b"one\n"]  # the second is the event loop's to hand to a thread


def test_a_closing_connection_or_a_stopping_process_handles_no_more(monkeypatch):
    process, conn, client, handled, _ = _keepalive_process(monkeypatch)
    client.sendall(b"close\none\n")
    assert process.handle(conn) == (False, conn) and handled.lines == [b"close\n"]
    process, conn, client, handled, _ = _keepalive_process(monkeypatch, alive=False)
    client.sendall(b"one\ntwo\n")
    assert process.handle(conn) == (True, conn) and handled.lines == [b"one\n"]
