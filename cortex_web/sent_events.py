"""Celery's task-sent events for the gateway's prediction messages, published in batches off the request.

Flower shows a message as sent (queued) from this event. Celery publishes it inside send_task, right
after the message itself: a second Redis round trip on every prediction, made just when the worker is
taking the message, so on two cores the two compete (measured: the worker started the task about
0.5 ms later than with no event). Here the event is made in the request thread, with its real timestamp
and clock, and a background thread publishes what has gathered a moment later as one message of
several events, the way a worker buffers its own task events. Flower orders a task's events by their
state, not by arrival, so a sent event that arrives after the task started changes nothing it shows.
"""
from __future__ import annotations

import atexit
import logging
import threading
import time
from typing import Any

from celery import Celery
from celery.events import EventDispatcher

log = logging.getLogger(__name__)

FLUSH_DELAY_SECONDS = 0.1
BUFFER_LIMIT = 1000  # flushed at once if this many gather (never, short of thousands of sends a second)


class DeferredSentEvents:
    """Pass as send_task's `event_dispatcher`: Celery calls publish() with each message's task-sent event."""

    def __init__(self, app: Celery, flush_delay: float = FLUSH_DELAY_SECONDS) -> None:
        self._app = app
        self._flush_delay = flush_delay
        self._dispatcher: EventDispatcher | None = None
        self._guard = threading.Lock()
        self._pending = threading.Event()

    def publish(self, event_type: str, fields: dict[str, Any], producer: Any = None, **_options: Any) -> None:
        self._events().send(event_type, **fields)  # buffered: the event is stamped now, published later

    def _events(self) -> EventDispatcher:
        if self._dispatcher is None:
            with self._guard:
                if self._dispatcher is None:
                    self._dispatcher = self._app.events.Dispatcher(
                        self._app.connection_for_write(), buffer_group=["task"], buffer_limit=BUFFER_LIMIT,
                        on_send_buffered=self._pending.set)
                    flusher = threading.Thread(target=self._flush_forever, name="cortex-sent-events",
                                               daemon=True)
                    flusher.start()
                    atexit.register(self.flush)
        return self._dispatcher

    def _flush_forever(self) -> None:
        while True:
            self._pending.wait()
            time.sleep(self._flush_delay)  # let events gather: one publish for all of them
            self._pending.clear()
            self.flush()

    def flush(self) -> None:
        try:
            if self._dispatcher is not None:
                self._dispatcher.flush(errors=False)
        except Exception:  # events are for monitoring only: never fail a request or stop this thread
            log.warning("could not publish task-sent events", exc_info=True)
