"""What Flower sees of a prediction: Celery task events, read here with Celery's own event receiver.

The gateway publishes its task-sent events in batches after the request (cortex_web/sent_events.py);
they must still arrive, carry the time the message was sent, and name the jobs the message holds.
"""
from __future__ import annotations

import threading
import uuid
from typing import Any

from cortex_tasks import app as celery_app
from cortex_web.sent_events import FLUSH_DELAY_SECONDS
from tests.support.waiting import wait_for


class EventLog:
    """Every task event on the broker while it runs, like a Flower instance watching."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._capture, daemon=True)

    def __enter__(self) -> "EventLog":
        self._thread.start()
        wait_for(lambda: self._receiver is not None, 10, "the event receiver")
        return self

    def __exit__(self, *_exc: object) -> None:
        self._receiver.should_stop = True
        self._thread.join(5)

    def _capture(self) -> None:
        with celery_app.connection_for_read() as connection:
            self._receiver = celery_app.events.Receiver(connection, handlers={"*": self.events.append})
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def of_message(self, message_id: str) -> dict[str, dict[str, Any]]:
        return {event["type"]: event for event in list(self.events) if event.get("uuid") == message_id}


def test_prediction_messages_are_announced_to_flower_with_their_send_time(api, workers):
    with EventLog() as log:
        job_ids: list[str] = []

        def announced_message() -> str | None:
            # The receiver may subscribe a moment after it starts: predict until a message is announced.
            job_ids.append(api.predict("embed", [f"watched in flower {uuid.uuid4().hex}"])["job_id"])
            for event in list(log.events):
                named = any(job_id in event.get("kwargs", "") for job_id in job_ids)
                if event["type"] == "task-sent" and named:
                    return event["uuid"]
            return None

        message_id = wait_for(announced_message, 30, "a task-sent event naming a prediction job",
                              interval=0.3)
        events = wait_for(
            lambda: (found := log.of_message(message_id)) and "task-succeeded" in found and found,
            30, "the worker's events for the same message")
    sent, received = events["task-sent"], events["task-received"]
    assert sent["name"] == "cortex.inference.run_gpu_jobs" and sent["queue"] == "gpu"
    # Ids and sizes only (core/publishing.py): the job and its input count, never the text.
    assert "'inputs': 1" in sent["kwargs"] and "watched in flower" not in sent["kwargs"]
    assert received["kwargs"] == sent["kwargs"] and "watched in flower" not in received["kwargs"]
    # Stamped when the message left, not when the batch of events was published after it (FLUSH_DELAY_SECONDS,
    # 100 ms, later). Celery stamps the event just after the publish call returns, so on a busy machine the
    # worker may stamp its receipt a few milliseconds earlier: allowed, a stamp at flush time is not.
    assert sent["timestamp"] <= received["timestamp"] + FLUSH_DELAY_SECONDS / 2
