"""Flower, started by `cortex flower` (the Procfile's and compose/'s; `cortex up` gives it the same
environment), shows the broker: its Broker tab and /api/queues/length know the Redis broker (they answered
404 "'redis' broker is not supported" while the transport was named by its class), and RabbitMQ
(CORTEX_BROKER_URL), whose queue lengths Flower reads from RabbitMQ's management API: the address `cortex
flower` derives from the broker URL, or CORTEX_FLOWER_BROKER_API."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from cortex_tasks.stack.embedded import free_port
from tests.support.brokers import Broker, rabbitmq_vhost
from tests.support.processes import REPO_ROOT
from tests.support.rabbitmq_management import MANAGEMENT_PORT, rabbitmq_management
from tests.support.tcp_relay import TcpRelay

PASSWORD = "flower-test-password"


def _get(url: str) -> bytes:
    token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.read()


@pytest.fixture()
def flower_url(tmp_path):
    with running_flower(tmp_path, {}) as url:
        yield url


@contextmanager
def running_flower(tmp_path, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    log = open(tmp_path / "flower.log", "wb")
    # `cortex flower`, which hands Flower its password (and RabbitMQ's API) through the environment.
    cortex = [sys.executable, "-c", "import sys; from cortex_tasks.cli import main; sys.exit(main())"]
    process = subprocess.Popen(
        [*cortex, "flower", f"--port={port}", "--address=127.0.0.1", f"--db={tmp_path / 'flower.db'}"],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "CORTEX_FLOWER_PASSWORD": PASSWORD, **env},
        cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url + "/healthcheck", timeout=2).read()  # needs no password
                break
            except OSError:
                assert process.poll() is None, (tmp_path / "flower.log").read_text()
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(20)
        log.close()


def test_flower_reports_queue_lengths_and_renders_the_broker_tab(flower_url, workers):
    answer = json.loads(_get(flower_url + "/api/queues/length"))
    queues = {queue["name"]: queue["messages"] for queue in answer["active_queues"]}
    assert {"gpu", "nlp"} <= set(queues)
    assert all(isinstance(count, int) for count in queues.values())
    html = _get(flower_url + "/broker").decode()
    assert "not supported" not in html and "gpu" in html


def _queue_lengths(flower: str) -> dict[str, int | None]:
    answer = json.loads(_get(flower + "/api/queues/length"))
    # A queue RabbitMQ has not counted yet (its statistics come every few seconds) has no "messages".
    return {queue["name"]: queue.get("messages") for queue in answer["active_queues"]}


def _lengths_become(flower: str, expected: dict[str, int], timeout: float = 60) -> None:
    """RabbitMQ's management API counts a queue's messages every few seconds (its statistics interval,
    5 s by default): Flower shows a new length once RabbitMQ has counted it."""
    deadline = time.monotonic() + timeout
    while (seen := _queue_lengths(flower)) != expected:
        assert time.monotonic() < deadline, f"Flower shows {seen}; RabbitMQ holds {expected}"
        time.sleep(0.5)


def _publish(url: str, counts: dict[str, int]) -> None:
    broker = Broker("rabbitmq", url)
    for queue, count in counts.items():
        for _ in range(count):
            broker.send_task("cortex.testing.never_run", queue=queue)


def test_cortex_flower_reports_rabbitmqs_queue_lengths(tmp_path, rabbitmq_url):
    rabbitmq_management()
    with rabbitmq_vhost() as url:  # a virtual host of its own: nothing else takes or adds messages
        _publish(url, {"nlp": 3, "gpu": 1})
        with running_flower(tmp_path, {"CORTEX_BROKER_URL": url}) as flower:
            _lengths_become(flower, {"nlp": 3, "gpu": 1})
            _publish(url, {"gpu": 2})
            _lengths_become(flower, {"nlp": 3, "gpu": 3})
            html = _get(flower + "/broker").decode()
            assert "not supported" not in html and "amqp://" in html and "nlp" in html


def test_cortex_flower_reads_the_management_api_of_the_setting(tmp_path, rabbitmq_url):
    rabbitmq_management()
    # The API reached through a relay on a port of its own: Flower reads it there, or not at all.
    api = TcpRelay("127.0.0.1", MANAGEMENT_PORT).start()
    try:
        with rabbitmq_vhost() as url:
            _publish(url, {"nlp": 2})
            with running_flower(tmp_path, {"CORTEX_BROKER_URL": url,
                                           "CORTEX_FLOWER_BROKER_API": f"http://127.0.0.1:{api.port}/api"}) as flower:
                _lengths_become(flower, {"nlp": 2})
                api.stop()
                assert _queue_lengths(flower) == {}  # Flower logs the failed API call and shows no queue
                log = (tmp_path / "flower.log").read_text(errors="replace")
                assert "RabbitMQ management API call failed" in log
    finally:
        api.stop()
