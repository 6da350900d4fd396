"""Flower, started as `cortex up` starts it, shows the broker: its Broker tab and /api/queues/length know the
Redis broker (they answered 404 "'redis' broker is not supported" while the transport was named by its class),
and RabbitMQ (CORTEX_BROKER_URL), whose queue lengths Flower reads from RabbitMQ's management API."""
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
from tests.support.processes import REPO_ROOT


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
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "cortex_tasks", "flower", f"--port={port}", "--address=127.0.0.1",
         f"--db={tmp_path / 'flower.db'}"],
        # The password through the environment, as `cortex up` passes it (never on the command line).
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "FLOWER_BASIC_AUTH": f"admin:{PASSWORD}", **env}, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
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


def _management_api_answers() -> bool:
    try:
        urllib.request.urlopen("http://127.0.0.1:15672/api/overview", timeout=2).close()
    except urllib.error.HTTPError:
        return True  # there, and asking for credentials
    except OSError:
        return False
    return True


def test_flower_broker_tab_with_rabbitmq(tmp_path, rabbitmq_url):
    with running_flower(tmp_path, {"CORTEX_BROKER_URL": rabbitmq_url}) as url:
        html = _get(url + "/broker").decode()
        assert "not supported" not in html and "amqp://" in html
        if not _management_api_answers():
            pytest.skip("RabbitMQ's management plugin is not enabled here: Flower reads queue lengths from it "
                        "(rabbitmq-plugins enable rabbitmq_management)")
        answer = json.loads(_get(url + "/api/queues/length"))
        assert {"gpu", "nlp"} <= {queue["name"] for queue in answer["active_queues"]}
