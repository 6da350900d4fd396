"""RabbitMQ's management HTTP API for the tests (Flower reads a RabbitMQ broker's queue lengths from it).

The plugin ships with the RabbitMQ server but may be off: as root, `rabbitmq-plugins enable
rabbitmq_management` turns it on in the running node (idempotent, no restart). Only where that cannot be
done (no rabbitmq-plugins, not root) are the tests that need it skipped, with what to run; a plugin that
fails to start fails them.
"""
from __future__ import annotations

import base64
import os
import shutil
import subprocess
import threading
import time
import urllib.request

import pytest

from tests.support.brokers import RABBITMQ_HOST

MANAGEMENT_PORT = int(os.environ.get("CORTEX_TEST_RABBITMQ_MANAGEMENT_PORT", "15672"))
MANAGEMENT_URL = f"http://{RABBITMQ_HOST}:{MANAGEMENT_PORT}"
ENABLE = ["rabbitmq-plugins", "enable", "rabbitmq_management"]
_lock = threading.Lock()
_outcome: tuple[str, str] | None = None


def _answers() -> bool:
    """Whether the API lists queues (the tests' user, guest, is RabbitMQ's administrator). Just enabled, it
    may refuse a while with a 5xx before its statistics database has started."""
    token = base64.b64encode(b"guest:guest").decode()
    request = urllib.request.Request(MANAGEMENT_URL + "/api/queues", headers={"Authorization": f"Basic {token}"})
    try:
        urllib.request.urlopen(request, timeout=2).close()
    except OSError:  # refused, or an HTTP error
        return False
    return True


def _enable() -> tuple[str, str]:
    if shutil.which("rabbitmq-plugins") is None:
        return "skip", "rabbitmq-plugins is not installed"
    if os.geteuid() != 0:
        return "skip", f"`{' '.join(ENABLE)}` needs root"
    try:
        done = subprocess.run(ENABLE, check=False, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "fail", f"`{' '.join(ENABLE)}` took more than 120 s"
    if done.returncode != 0:
        return "fail", f"`{' '.join(ENABLE)}` failed: {(done.stderr or done.stdout).strip()[-800:]}"
    deadline = time.monotonic() + 60  # the plugin's web listener starts after the command returns
    while not _answers():
        if time.monotonic() > deadline:
            return "fail", f"the plugin is enabled but nothing answers on {MANAGEMENT_URL}"
        time.sleep(0.5)
    return "ok", ""


def rabbitmq_management() -> str:
    """The management API's base URL, enabling the plugin the first time it does not answer. Skips the
    calling test where it cannot be enabled; fails it where enabling failed."""
    global _outcome
    with _lock:
        if _outcome is None or _outcome[0] == "ok":
            _outcome = ("ok", "") if _answers() else _enable()
    outcome, why = _outcome
    if outcome == "skip":
        pytest.skip(f"RabbitMQ's management plugin is off and cannot be turned on here ({why}): Flower reads "
                    f"RabbitMQ's queue lengths from it (`{' '.join(ENABLE)}`)")
    if outcome == "fail":
        pytest.fail(f"RabbitMQ's management plugin: {why}")
    return MANAGEMENT_URL
