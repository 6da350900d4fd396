"""Coalescing before the broker: concurrent prediction requests in this gateway process for the same
task, model, params and priority travel to the worker in one message.

Nothing waits when nothing is in flight: a request for an idle group is sent at once, by its own
thread. While a group already has `max_inflight` messages being worked on, new requests gather and
leave together as soon as one comes back (or the gathered items reach the model's max batch size). On
two cores this removes most per-request broker and database work, which otherwise competes with the
model for CPU.

Between the two, the gathering window adapts to the load (as BentoML's and Triton's batchers do). While
a group has a message in flight (the worker is busy with it) and requests arrive faster than the window,
a new message does not leave with its first request: it gathers until arrivals pause (`quiet`: three
times the group's usual gap between requests arriving together) or its first request has waited the
window (half the group's measured round trip, at most CORTEX_COALESCE_MAX_WAIT_MS, 20), whichever comes
first. Without it, a closed loop of clients sends the first request returning from every reply alone
(the reply freed a slot), and the rest of that reply's clients a moment later. With sparse arrivals the
window is zero and a request leaves at once, as it does when nothing is in flight, so a single client
never waits for it.
The round trip and the gaps are measured per group (exponential moving averages).

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
    queued_at: float = field(default_factory=time.monotonic)


# Weight of the newest measurement in a group's moving averages.
PACE_WEIGHT = 0.2
# Quiet (no arrival for this long) ends a gathering: this many of the group's usual gaps within a burst...
QUIET_GAPS = 3.0
# ... but not less than this (a thread wake-up and an HTTP parse apart on a busy two-core machine).
MIN_QUIET_SECONDS = 0.0005
# Gaps shorter than this share of the largest window are requests arriving together; longer ones (a few
# clients taking turns) must not stretch the quiet time to the whole window.
BURST_SHARE = 0.25


@dataclass
class Pace:
    """How a group's requests arrive and how long its messages take to come back: what its gathering
    window is sized from."""

    last_arrival: float | None = None
    gap: float | None = None  # between consecutive arrivals, all of them
    burst_gap: float | None = None  # between arrivals arriving together (BURST_SHARE)
    round_trip: float | None = None  # from a message's sending to its reply

    def arrived(self, now: float, max_window: float) -> None:
        if self.last_arrival is not None:
            gap = now - self.last_arrival
            # Clipped: only "within the window or not" matters, and an idle minute must not make the
            # group look sparse for the next hundred requests.
            self.gap = _moving(self.gap, min(gap, 2 * max_window))
            if gap < max_window * BURST_SHARE:
                self.burst_gap = _moving(self.burst_gap, gap)
        self.last_arrival = now

    def returned(self, seconds: float) -> None:
        self.round_trip = _moving(self.round_trip, seconds)

    def window(self, max_window: float) -> float:
        """How long a message may gather while another one is in flight: zero until the group was
        measured, and when the next request is not expected within it."""
        if self.round_trip is None or self.gap is None or max_window <= 0:
            return 0.0
        window = min(max_window, self.round_trip / 2)
        return window if self.gap < window else 0.0

    def quiet(self, window: float) -> float:
        return min(window, max(MIN_QUIET_SECONDS, QUIET_GAPS * (self.burst_gap or 0.0)))


def _moving(average: float | None, value: float) -> float:
    return value if average is None else average + PACE_WEIGHT * (value - average)


def group_for(task: str, model: str, params: dict[str, Any], priority: int, queue: str, task_name: str, *,
              tenant: str, sensitive: bool = False) -> Group:
    return Group(tenant, task, model, json.dumps(params, sort_keys=True, separators=(",", ":")), priority, queue,
                 task_name, sensitive)


class Coalescer:
    def __init__(self, listener: ReplyListener, enabled: bool = True,
                 max_items_for: Callable[[str], int] = lambda _model: 32, max_inflight: int = 4,
                 inflight_timeout: float = 60.0, max_wait: float = 0.02,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.listener = listener
        self.enabled = enabled
        self.max_items_for = max_items_for  # items per message, by model
        self.max_inflight = max_inflight
        self.inflight_timeout = inflight_timeout
        self.max_wait = max_wait  # the longest gathering window (Pace.window)
        self._clock = clock  # what PendingJob.queued_at is measured with too
        self._pace: dict[Group, Pace] = defaultdict(Pace)
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
            pace = self._pace[group]
            pace.arrived(job.queued_at, self.max_wait)
            inflight = len(self._inflight[group])
            # Nothing gathered and a message may leave now: this thread sends it (handing it to the
            # dispatching thread costs every request on an idle gateway a thread wake-up). Unless the
            # group is busy and its requests come in bursts: then it gathers (module docstring).
            send_now = (not jobs and inflight < self.max_inflight
                        and (inflight == 0 or pace.window(self.max_wait) == 0))
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
        self._inflight[group][message_id] = self._clock()
        self._message_groups[message_id] = group
        return message_id

    def _message_done(self, message_id: str) -> None:
        with self._condition:
            group = self._message_groups.pop(message_id, None)
            if group is not None:
                sent_at = self._inflight[group].pop(message_id, None)
                if sent_at is not None:
                    self._pace[group].returned(self._clock() - sent_at)
                self._condition.notify()

    def _forget_inflight(self) -> None:
        """The reply channel was lost: the replies of the messages in flight will never come, and counting
        them would hold every new request of their groups for the whole in-flight timeout (after a Redis
        restart, each sync prediction waited its full wait and was answered 202)."""
        with self._condition:
            self._inflight.clear()
            self._message_groups.clear()
            self._condition.notify_all()

    def _ready_batches(self) -> tuple[list[tuple[Group, list[PendingJob], str]], float | None]:
        """Under the lock: take what may be sent now; and when the earliest gathering still held ends
        (None: none is held for its window, only for the in-flight budget)."""
        now = self._clock()
        batches = []
        next_due: float | None = None
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
            if inflight and gathered < max_items:
                due = self._gathering_ends(group, jobs[0].queued_at)
                if due is not None and due > now:
                    next_due = due if next_due is None else min(next_due, due)
                    continue
            taken, count = [], 0
            while jobs and (not taken or count + len(jobs[0].inputs) <= max_items):
                job = jobs.pop(0)
                taken.append(job)
                count += len(job.inputs)
            batches.append((group, taken, self._track(group)))
        return batches, next_due

    def _gathering_ends(self, group: Group, first_queued_at: float) -> float | None:
        """When a busy group's gathering message leaves: once arrivals pause or its first job has waited
        the window (None: no window, it leaves now)."""
        pace = self._pace[group]
        window = pace.window(self.max_wait)
        if window == 0 or pace.last_arrival is None:
            return None
        return min(first_queued_at + window, pace.last_arrival + pace.quiet(window))

    def _dispatch_forever(self) -> None:
        while True:
            with self._condition:
                batches, next_due = self._ready_batches()
                while not batches:
                    self._condition.wait(timeout=0.5 if next_due is None
                                         else max(0.0, next_due - self._clock()))
                    batches, next_due = self._ready_batches()
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
