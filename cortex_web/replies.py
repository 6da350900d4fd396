"""Waiting for job outcomes without polling.

Each gateway process subscribes once to its own Redis channel and names it in every task it sends;
the worker publishes the outcomes of a whole message there (cortex_tasks.core.jobs.outcomes). A request
thread registers its job id *before* the message is sent, then blocks on an Event until its outcome
arrives or its wait runs out.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import redis

from cortex_tasks.core import dependencies
from cortex_tasks.core.jobs.outcomes import REPLY_CHANNEL_PREFIX
from cortex_tasks.core.settings import get_settings

log = logging.getLogger(__name__)


class _Pending:
    __slots__ = ("event", "outcome")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.outcome: dict[str, Any] | None = None


class ReplyListener:
    def __init__(self, redis_url: str) -> None:
        self.channel = f"{REPLY_CHANNEL_PREFIX}{uuid.uuid4().hex}"
        self._redis_url = redis_url
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None
        self._ever_subscribed = False
        self.on_message_done: Callable[[str], None] | None = None
        # Called when the channel is subscribed again after it was lost: pub/sub keeps nothing, so every
        # reply published meanwhile is gone (and with a Redis that lost its data, the messages too).
        self.on_resubscribed: Callable[[], None] | None = None

    def _ensure_running(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._subscribed.is_set():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._listen, name="cortex-replies", daemon=True)
                self._thread.start()
        if self._ever_subscribed:
            # Subscribed before and lost since: Redis is away. The request answers 503 within its budget
            # rather than waiting for the listener to find Redis again.
            dependencies.check(dependencies.REDIS)
            if not self._subscribed.wait(timeout=get_settings().redis_socket_timeout_seconds):
                raise dependencies.DependencyUnavailable(dependencies.REDIS)
            return
        self._subscribed.wait(timeout=5)

    def _listen(self) -> None:
        while True:
            try:
                client = redis.Redis.from_url(self._redis_url, socket_keepalive=True)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                if self._ever_subscribed and self.on_resubscribed is not None:
                    self.on_resubscribed()
                self._subscribed.set()
                self._ever_subscribed = True
                for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._deliver(message["data"])
            except Exception:
                self._subscribed.clear()
                log.warning("reply channel lost; resubscribing")
                time.sleep(0.5)

    def _deliver(self, data: bytes) -> None:
        message = orjson.loads(data)
        for job_id, outcome in message.get("outcomes", {}).items():
            self.resolve(job_id, outcome)
        if message.get("message_id") and self.on_message_done is not None:
            self.on_message_done(message["message_id"])

    def resolve(self, job_id: str, outcome: dict[str, Any]) -> None:
        pending = self._pending.get(job_id)
        if pending is not None:
            pending.outcome = outcome
            pending.event.set()

    def expect(self, job_id: str) -> None:
        self._ensure_running()
        self._pending[job_id] = _Pending()

    def wait(self, job_id: str, timeout: float) -> dict[str, Any] | None:
        pending = self._pending.get(job_id)
        if pending is None:
            return None
        try:
            pending.event.wait(timeout)
            return pending.outcome
        finally:
            self._pending.pop(job_id, None)
