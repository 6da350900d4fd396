"""Coalescing before the broker: concurrent prediction requests in this gateway process for the same
task, model, params and priority travel to the worker in one message.

Nothing waits when nothing is in flight: a request for an idle group is sent at once, by its own
thread. While a group already has `max_inflight` messages being worked on, new requests gather and
leave together as soon as one comes back (or the gathered items reach the model's max batch size). On
two cores this removes most per-request broker and database work, which otherwise competes with the
model for CPU.

`max_inflight` (CORTEX_COALESCE_MAX_INFLIGHT, 4) is two per model lane of a two-core worker: one message
running and one queued behind it, so that a lane finding its batch done has the next one waiting instead
of idling while the answer travels back and the next message comes (with 2, lanes were busy 1.5 of 2 at
64 clients; with 4, 1.98). It is the whole gateway's: each of N gateway processes keeps 4/N (rounded up);
two processes keeping 4 each sent smaller messages (16 clients x 1 item: 0.40 of the raw limit against
0.47 with one process; with 2 each, 0.47 again).

Its gathering shares no code with the worker's dynamic batcher (runtime/inference/batcher.py): it takes
whole jobs of any size, in arrival order, from groups keyed by priority and queue too (one message carries
one priority), while the batcher takes single items across priorities from a heap, in shares per idle lane
and up to each item's call size. What they have in common, stopping at the max size, is one line; a policy
serving both would need a peek-and-pop interface over a list and a heap, and read worse in each.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cortex_tasks import app as celery_app
from cortex_tasks.core import dependencies
from cortex_tasks.core.contracts.messages import JobRecord, PredictionJob, PredictionMessage
from cortex_tasks.core.jobs import store
from cortex_tasks.core.observability import tracing
from cortex_tasks.core.storage.sealing import inputs_in_transit, seal_in_transit
from cortex_web.metrics import JOBS_SUBMITTED
from cortex_web.replies import ReplyListener
from cortex_web.sent_events import DeferredSentEvents

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    # Requests of different tenants never share a message: the worker acts for one tenant per message
    # (its jobs' rows, a registered model's lookup), and two tenants' `m@1` are different models anyway.
    tenant: str
    task: str
    model: str
    params_json: str
    priority: int
    queue: str
    task_name: str
    sensitive: bool = False  # sensitive and other jobs never share a message


@dataclass
class PendingJob:
    job_id: str
    inputs: list[Any]
    record: store.NewJob
    inline_errors: bool = False
    looked_up: bool = False  # the inputs were just looked up in the shared cache (L2), and missed
    sent: threading.Event = field(default_factory=threading.Event)
    # The request's trace context, taken in its thread: the job travels in it, whichever message it joins.
    trace: dict[str, str] | None = field(default_factory=tracing.carrier)
    # Why its message could not be queued, set before `sent`: a request that stopped waiting for its reply
    # (wait 0, or its wait ran out) reads it there, as the reply listener has forgotten the job by then.
    send_failure: dict[str, Any] | None = None


def group_for(task: str, model: str, params: dict[str, Any], priority: int, queue: str, task_name: str, *,
              tenant: str, sensitive: bool = False) -> Group:
    return Group(tenant, task, model, json.dumps(params, sort_keys=True, separators=(",", ":")), priority, queue,
                 task_name, sensitive)


class Coalescer:
    def __init__(self, listener: ReplyListener, enabled: bool = True,
                 max_items_for: Callable[[str], int] = lambda _model: 32, max_inflight: int = 4,
                 inflight_timeout: float = 60.0) -> None:
        self.listener = listener
        self.enabled = enabled
        self.max_items_for = max_items_for  # items per message, by model
        self.max_inflight = max_inflight
        self.inflight_timeout = inflight_timeout
        self._pending: dict[Group, list[PendingJob]] = defaultdict(list)
        self._inflight: dict[Group, dict[str, float]] = defaultdict(dict)
        self._message_groups: dict[str, Group] = {}
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._sent_events = DeferredSentEvents(celery_app)
        listener.on_message_done = self._message_done
        listener.on_resubscribed = self._forget_inflight

    def submit(self, group: Group, job: PendingJob) -> None:
        if not self.enabled:
            self._send(group, [job], uuid.uuid4().hex)
            return
        with self._condition:
            jobs = self._pending[group]
            # Nothing gathered and a message may leave now: this thread sends it (handing it to the
            # dispatching thread costs every request on an idle gateway a thread wake-up).
            send_now = not jobs and len(self._inflight[group]) < self.max_inflight
            message_id = self._track(group) if send_now else None
            if message_id is None:
                jobs.append(job)
                self._condition.notify()
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._dispatch_forever, name="cortex-coalescer",
                                                    daemon=True)
                    self._thread.start()
        if message_id is not None:
            self._send(group, [job], message_id)

    def withdraw(self, job: PendingJob) -> bool:
        """Take back a job still waiting to be sent (its request is answered 503 instead); False when it
        has left already."""
        with self._condition:
            for jobs in self._pending.values():
                if job in jobs:
                    jobs.remove(job)
                    return True
        return False

    def hurry(self, job: PendingJob) -> None:
        """Send now, in a message of its own, a job still held back by its group's in-flight budget: its
        caller's wait is over and it is to be answered 202, which needs the message out. Held, the
        request waited for the budget (up to 10 s when the workers had stopped answering, past many
        clients' timeouts, though wait=0 asked for no wait at all)."""
        with self._condition:
            group = next((group for group, jobs in self._pending.items() if job in jobs), None)
            if group is None:
                return
            self._pending[group].remove(job)
            message_id = self._track(group)
        self._send(group, [job], message_id)

    def _track(self, group: Group) -> str:
        """Under the lock: a new message of `group`, counted in flight until its reply comes back."""
        message_id = uuid.uuid4().hex
        self._inflight[group][message_id] = time.monotonic()
        self._message_groups[message_id] = group
        return message_id

    def _message_done(self, message_id: str) -> None:
        with self._condition:
            group = self._message_groups.pop(message_id, None)
            if group is not None:
                self._inflight[group].pop(message_id, None)
                self._condition.notify()

    def _forget_inflight(self) -> None:
        """The reply channel was lost: the replies of the messages in flight will never come, and counting
        them would hold every new request of their groups for the whole in-flight timeout (after a Redis
        restart, each sync prediction waited its full wait and was answered 202)."""
        with self._condition:
            self._inflight.clear()
            self._message_groups.clear()
            self._condition.notify_all()

    def _ready_batches(self) -> list[tuple[Group, list[PendingJob], str]]:
        """Under the lock: take what may be sent now."""
        now = time.monotonic()
        batches = []
        for group, jobs in self._pending.items():
            if not jobs:
                continue
            inflight = self._inflight[group]
            for message_id, sent_at in list(inflight.items()):
                if now - sent_at > self.inflight_timeout:  # its reply was lost; stop counting it
                    inflight.pop(message_id, None)
                    self._message_groups.pop(message_id, None)
            gathered = sum(len(job.inputs) for job in jobs)
            max_items = self.max_items_for(group.model)
            if len(inflight) >= self.max_inflight and gathered < max_items:
                continue
            taken, count = [], 0
            while jobs and (not taken or count + len(jobs[0].inputs) <= max_items):
                job = jobs.pop(0)
                taken.append(job)
                count += len(job.inputs)
            batches.append((group, taken, self._track(group)))
        return batches

    def _dispatch_forever(self) -> None:
        while True:
            with self._condition:
                batches = self._ready_batches()
                while not batches:
                    self._condition.wait(timeout=0.5)
                    batches = self._ready_batches()
            for group, jobs, message_id in batches:
                self._send(group, jobs, message_id)

    @staticmethod
    def _job(job: PendingJob, sensitive: bool) -> PredictionJob:
        # A sensitive job's inputs are sealed while its message waits in the queue (when a key is there).
        sealed = seal_in_transit(job.inputs, inputs_in_transit(job.job_id)) if sensitive else None
        return PredictionJob(job_id=job.job_id, inputs=[] if sealed else job.inputs, sealed_inputs=sealed,
                             inline_errors=job.inline_errors, looked_up=job.looked_up, trace=job.trace,
                             record=JobRecord.model_validate(store.job_record(job.record)))

    def _send(self, group: Group, jobs: list[PendingJob], message_id: str) -> None:
        try:
            dependencies.check(dependencies.REDIS)  # Redis known to be away: fail now, not after a timeout
            # ignore_result: outcomes come back on the reply channel, so no per-message subscription to a
            # result key (a Redis round trip on this path).
            # What Flower shows of the message (kwargsrepr) is made by the app's AMQP: ids and sizes, never
            # inputs (core/publishing.py).
            message = PredictionMessage(
                tenant=group.tenant, task=group.task, model=group.model, params=json.loads(group.params_json),
                priority=group.priority,
                reply_to=self.listener.channel, message_id=message_id, sensitive=group.sensitive,
                # The worker creates each job's row from its record (see jobs/store.py).
                jobs=[self._job(job, group.sensitive) for job in jobs])
            with tracing.sending([job.trace for job in jobs], message_id=message_id, task=group.task,
                                 model=group.model):
                celery_app.send_task(
                    group.task_name, queue=group.queue, priority=group.priority, task_id=message_id,
                    ignore_result=True, kwargs=message.to_kwargs(),
                    event_dispatcher=self._sent_events,  # Flower's "sent" event, published off this path
                )
            JOBS_SUBMITTED.labels("predict", group.task, group.queue).inc(len(jobs))
        except Exception as exc:
            dependency = dependencies.failed_dependency(exc) or (
                exc.details["dependency"] if isinstance(exc, dependencies.DependencyUnavailable) else None)
            if dependency is None:
                log.exception("could not enqueue %d jobs", len(jobs), extra={"job_ids": [job.job_id for job in jobs]})
            else:
                log.warning("could not enqueue %d jobs: %s unavailable", len(jobs), dependency,
                            extra={"job_ids": [job.job_id for job in jobs]})
            self._message_done(message_id)
            failure = {"status": "failed", "error": {
                "code": "unavailable", "message": f"The job could not be queued: {type(exc).__name__}",
                **({"details": {"dependency": dependency}} if dependency else {})}}
            for job in jobs:
                job.send_failure = failure
                self.listener.resolve(job.job_id, failure)
        finally:
            for job in jobs:
                job.sent.set()
