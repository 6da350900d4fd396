"""The brokers the delivery and priority tests run against: the session's Redis, and RabbitMQ (the server
this machine runs on 127.0.0.1:5672) in a virtual host of the test session's own, deleted afterwards."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kombu import Connection

RABBITMQ_HOST = os.environ.get("CORTEX_TEST_RABBITMQ_HOST", "127.0.0.1")
RABBITMQ_PORT = int(os.environ.get("CORTEX_TEST_RABBITMQ_PORT", "5672"))


def rabbitmq_missing() -> str | None:
    """Why RabbitMQ tests cannot run here, or None."""
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed (it creates the test session's virtual host)"
    try:
        socket.create_connection((RABBITMQ_HOST, RABBITMQ_PORT), timeout=2).close()
    except OSError as exc:
        return f"no RabbitMQ at {RABBITMQ_HOST}:{RABBITMQ_PORT}: {exc}"
    return None


def _rabbitmqctl(*arguments: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *arguments], check=True, capture_output=True, timeout=60)


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """A fresh virtual host (so that runs never share queues) and the broker URL that reaches it."""
    name = f"cortex-test-{uuid.uuid4().hex[:10]}"
    _rabbitmqctl("add_vhost", name)
    try:
        _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{name}"
    finally:
        _rabbitmqctl("delete_vhost", name)


@dataclass
class Broker:
    """Where a test sends its messages and what its workers are told: `url` None is the session's Redis."""

    name: str
    url: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def send_task(self, name: str, **options: Any) -> Any:
        from cortex_tasks import app as celery_app

        if self.url is None:
            return celery_app.send_task(name, **options)
        with Connection(self.url) as connection:
            return celery_app.send_task(name, connection=connection, **options)
