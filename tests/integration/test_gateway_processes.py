"""A gateway of several processes (`cortex web --workers 2`, as compose and `cortex up` run it): keep-alive
connections are spread over the processes, and /metrics and /api/v1/health/cache report the totals of all
of them, whichever process answers."""
from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
import requests

from cortex_tasks.stack.embedded import free_port
from tests.support.waiting import wait_for

CORTEX = str(Path(sys.executable).with_name("cortex"))
CONNECTIONS = 8


@pytest.fixture()
def gateway(tmp_path: Path):
    port = free_port()
    with open(tmp_path / "gateway.log", "wb") as log:
        process = subprocess.Popen([CORTEX, "web", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                                    "--threads", "16"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{url}/health", timeout=2).status_code == 200
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still loading the app
            return False

    try:
        wait_for(lambda: up() or process.poll() is not None, 120, "the gateway")
        assert process.poll() is None, (tmp_path / "gateway.log").read_text()
        wait_for(lambda: len(psutil.Process(process.pid).children()) == 2, 60, "two gateway processes")
        pids = [child.pid for child in psutil.Process(process.pid).children()]
        # The second process may still be loading the app: wait until two clients find one process each.
        wait_for(lambda: each_process_takes_one(port, pids), 60, "both gateway processes to serve")
        yield {"url": url, "port": port, "pids": pids}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def connections_held(pid: int, port: int) -> int:
    return sum(1 for connection in psutil.Process(pid).net_connections("tcp")
               if connection.status == psutil.CONN_ESTABLISHED and connection.laddr.port == port)


def each_process_takes_one(port: int, pids: list[int]) -> bool:
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in pids]
    try:
        for connection in connections:
            call(connection, "GET", "/health")
        return [connections_held(pid, port) for pid in pids] == [1] * len(pids)
    finally:
        for connection in connections:
            connection.close()


def call(connection: http.client.HTTPConnection, method: str, path: str, body: object = None,
         key: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    response = connection.getresponse()
    return response.status, response.read()


def scraped(url: str, sample: str) -> float:
    exposition = requests.get(f"{url}/metrics", timeout=10).text
    match = re.search(rf"^{re.escape(sample)} (\S+)$", exposition, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_connections_spread_and_metrics_add_up(gateway, workers, keys):
    url, port = gateway["url"], gateway["port"]
    # Eight clients connect at once and keep their connections: each process holds its share (without
    # balancing, the first process to wake often takes all eight).
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(CONNECTIONS)]
    for connection in connections:
        connection.connect()
    for connection in connections:
        assert call(connection, "GET", "/health")[0] == 200
    held = [connections_held(pid, port) for pid in gateway["pids"]]
    assert sum(held) == CONNECTIONS and min(held) >= CONNECTIONS // 2 - 1, held

    health_sample = 'cortex_http_requests_total{method="GET",route="/health",status="200"}'
    before = scraped(url, health_sample)  # the fixture's own calls while waiting for the gateway
    for _ in range(5):
        for connection in connections:
            assert call(connection, "GET", "/health")[0] == 200
    # Every scrape (a new connection, answered by either process) sees all 40.
    assert [scraped(url, health_sample) - before for _ in range(6)] == [5.0 * CONNECTIONS] * 6

    # One new text: computed once (a miss), then a hit on every other connection, in either process.
    text = f"gateway processes {uuid.uuid4().hex}"
    body = {"task": "embed", "inputs": [text], "wait": 30}
    status, answer = call(connections[0], "POST", "/api/v1/predict", body, keys["inference_user"])
    assert status == 200, answer
    for connection in connections[1:]:
        assert call(connection, "POST", "/api/v1/predict", body, keys["inference_user"])[0] == 200
    for connection in connections:
        connection.close()
    reader = {"Authorization": f"Bearer {keys['reader']}"}
    for _ in range(4):
        stats = requests.get(f"{url}/api/v1/health/cache", headers=reader, timeout=10).json()
        assert (stats["hits"], stats["misses"]) == (CONNECTIONS - 1, 1), stats
        # Each process keeps the answer in its own L1 (the second one copied it from L2 on its first hit).
        assert stats["l1"]["entries"] == 2 and stats["l1"]["misses"] == 2, stats["l1"]
    assert scraped(url, 'cortex_cache_items_total{result="hit"}') == CONNECTIONS - 1


def test_requests_gunicorn_refuses_itself_are_answered_in_the_json_error_shape(gateway):
    import socket

    def raw(request: bytes) -> tuple[str, dict]:
        with socket.create_connection(("127.0.0.1", gateway["port"]), timeout=10) as connection:
            connection.sendall(request)
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"content-type: application/json" in head.lower(), answer[:300]
        return head.split(b"\r\n")[0].decode(), json.loads(body)

    status, body = raw(b"NOT A REQUEST LINE\r\n\r\n")
    assert status.startswith("HTTP/1.1 400") and body["error"]["code"] == "bad_request"
    status, body = raw(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-Filler-%d: %s\r\n" % (i, b"a" * 100) for i in range(200)) + b"\r\n")
    assert status.startswith("HTTP/1.1 431") and body["error"]["code"] == "request_header_fields_too_large"
    assert body["error"]["message"]
