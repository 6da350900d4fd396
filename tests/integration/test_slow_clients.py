"""Slow clients cannot hold the gateway: a request must arrive within CORTEX_REQUEST_READ_TIMEOUT (then at
CORTEX_REQUEST_MIN_RATE), or its connection is closed. With the shipped defaults, over raw sockets: 40
connections sending a byte a second (headers, or a body) are closed, and other clients are served meanwhile
by a gateway with fewer threads than there are trickling connections."""
from __future__ import annotations

import os
import select
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cortex_tasks.core.settings import Settings
from cortex_tasks.stack.embedded import free_port
from tests.support.waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
CONNECTIONS = 40
THREADS = 8  # fewer than the trickling connections: without a read deadline they would hold every thread


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[tuple[str, int]]:
    from gunicorn_conf import command

    port = free_port()
    log = tmp_path_factory.mktemp("slow") / "gateway.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(log, "wb") as out:
        process = subprocess.Popen(command(f"127.0.0.1:{port}", 1, THREADS), stdout=out, stderr=subprocess.STDOUT,
                                   env=env, cwd=REPO_ROOT)

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):  # nosec B310 - loopback
                return True
        except OSError:
            return process.poll() is not None

    try:
        wait_for(up, 120, "the gateway")
        assert process.poll() is None, log.read_text()
        yield "127.0.0.1", port
    finally:
        process.terminate()
        process.wait(30)


def closed_by_server(sock: socket.socket) -> bool:
    """Readable means the server is done with it: it closed the connection, or answered (an error)."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def trickle(address: tuple[str, int], preamble: bytes, payload: bytes, limit: float) -> float:
    """Open CONNECTIONS sockets, send `preamble` at once and then `payload` a byte a second on each; the
    seconds until the server had closed every one of them (fails past `limit`). Once the grace period is
    over, another client is answered while the slow ones still trickle."""
    grace = Settings().request_read_seconds
    checked = False
    sockets = [socket.create_connection(address, timeout=5) for _ in range(CONNECTIONS)]
    started = time.monotonic()
    try:
        for sock in sockets:
            if preamble:
                sock.sendall(preamble)
        open_ = list(sockets)
        position = 0
        while open_:
            elapsed = time.monotonic() - started
            assert elapsed < limit, f"{len(open_)} slow connections still open after {elapsed:.0f}s"
            if elapsed > grace + 3 and not checked:
                with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/health", timeout=10) as answer:  # nosec B310
                    assert answer.status == 200
                checked = True
            still = []
            for sock in open_:
                if closed_by_server(sock):
                    continue
                try:
                    sock.send(payload[position % len(payload):position % len(payload) + 1])
                    still.append(sock)
                except OSError:
                    pass  # reset by the server
            open_ = still
            position += 1
            time.sleep(1)
        return time.monotonic() - started
    finally:
        for sock in sockets:
            sock.close()


def test_shipped_read_deadline() -> None:
    settings = Settings()
    assert settings.request_read_seconds == 10.0 and settings.request_min_bytes_per_second == 1024


def test_trickled_headers_are_cut_off(gateway) -> None:
    grace = Settings().request_read_seconds
    seconds = trickle(gateway, b"", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200, limit=grace + 15)
    assert seconds >= grace - 1  # the grace is honoured: not cut off before it


def test_trickled_body_is_cut_off(gateway) -> None:
    grace = Settings().request_read_seconds
    preamble = (b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 500\r\n\r\n")
    trickle(gateway, preamble, b'{"task": "embed", "inputs": ["' + b"x" * 500, limit=grace + 15)


def test_a_large_body_at_a_normal_rate_is_not_cut_off(gateway, keys) -> None:
    """Past the grace period, a body arriving faster than the minimum rate is read to its end."""
    host, port = gateway
    # An unknown task: the whole body is read and refused, nothing is queued.
    body = b'{"task": "telepathy", "inputs": ["' + b"x" * 60_000 + b'"]}'
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + keys["inference_user"].encode() + b"\r\n"
                     b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        started = time.monotonic()
        sent = 0
        while sent < len(body):  # 6 KB a second: past the 10 s grace, above the 1 KB/s minimum
            sock.sendall(body[sent:sent + 3000])
            sent += 3000
            time.sleep(0.5)
        assert time.monotonic() - started > Settings().request_read_seconds
        answer = sock.recv(4096)
    # The whole body was read and answered (404 unknown_task), not cut off.
    assert answer.startswith(b"HTTP/1.1 404"), answer[:200]
