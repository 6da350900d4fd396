"""Running a message of prediction jobs in a worker: count deliveries, batch the items through the
model, fall back when the model fails, record every outcome once, in bulk, with each job's worker seconds
for the usage ledger (core/usage/) in the same statement; a first delivery's rows after its answers
(core/jobs/write_behind.py)."""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from cortex_tasks.core.cache.service import MISSING, get_cache, keys_for
from cortex_tasks.core.catalogue import TASKS, find_model
from cortex_tasks.core.contracts.messages import PredictionJob
from cortex_tasks.core.jobs import store, write_behind
from cortex_tasks.core.jobs.deferred import DeferredCall, DelayedCalls
from cortex_tasks.core.jobs.outcomes import publish_outcomes
from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.openai.config import is_openai_model
from cortex_tasks.core.registry.references import plain, plain_model_name, split_qualified
from cortex_tasks.core.settings import Batching, get_settings
from cortex_tasks.core.tenancy import current_tenant, tenant_scope
from cortex_tasks.core.usage.worker_time import WorkerTime, worker_time
from cortex_tasks.runtime.inference import compute, service
from cortex_tasks.runtime.inference.batcher import Announcement, BatcherRegistry, DynamicBatcher, ItemFailure
from cortex_tasks.runtime.metrics.instruments import BATCH_SIZE
from cortex_tasks.runtime.models.loaded import get_model

log = logging.getLogger(__name__)
_batchers = BatcherRegistry()
AfterReply = list[Callable[[], None]]  # work left until a message's outcomes are published
Counted = tuple[dict[str, int], list[str]]  # ({job_id: attempt} of the jobs to run, [job_ids over the cap])
# A first delivery's jobs still running after this long are marked running (DeliveryCount).
MARK_RUNNING_AFTER_SECONDS = 1.0
_running_marks = DelayedCalls(MARK_RUNNING_AFTER_SECONDS, "cortex-running-marks")


def answers_per_job(entry: Any, params: dict[str, Any]) -> bool:
    """Models that must see a job's inputs together (a projection, say) get each job's list as one value.
    So do embed jobs that fill a vector collection: their ids and metadata line up with their inputs."""
    return not getattr(entry, "batchable", True) or bool(params.get("collection"))


def batching_of(model_name: str, entry: Any, params: dict[str, Any]) -> Batching:
    """How a model's batcher batches: as configured for it (settings.batching_for), or one value per call
    when batching is off or the model answers per job."""
    settings = get_settings()
    batching = settings.batching_for(plain(model_name))  # configured by name, as users know it
    if settings.batching_enabled and not answers_per_job(entry, params):
        return batching
    return Batching(1, batching.max_wait_seconds)


def batcher_for(task: str, model_name: str, params: dict[str, Any]) -> DynamicBatcher:
    """The process's batcher of a model and params: predictions and batch chunks share its calls and lanes.
    Raises KeyError for an unknown model."""
    # Its calls run on its own threads, which see no tenant: a batcher acts for one when what its calls do
    # is a tenant's, a registered model (its qualified name says whose) or an embed job writing into a
    # collection (params.collection is the tenant's). A shared bundled model otherwise batches every
    # tenant's items together: its answers depend on the input alone.
    tenant = split_qualified(model_name)[0] or (current_tenant() if params.get("collection") else None)
    key = (tenant or "", model_name, json.dumps(params, sort_keys=True))
    entry = find_model(model_name)  # bundled, a user's folder, or a registry version (name@version)
    if entry is None:
        raise KeyError(model_name)

    def create() -> DynamicBatcher:  # once per model and params in this process
        per_job = answers_per_job(entry, params)
        batching = batching_of(model_name, entry, params)

        def run_batch(values: list[Any]) -> list[Any]:
            with tenant_scope(tenant) if tenant else nullcontext():
                if per_job:  # each value is one job's whole input list, answered as a unit
                    return [service.predict(task, model_name, value, params)["outputs"] for value in values]
                return service.predict(task, model_name, values, params)["outputs"]

        return DynamicBatcher(run_batch, max_batch_size=batching.max_batch_size,
                              max_wait=batching.max_wait_seconds, name=f"batcher-{model_name}",
                              lanes=compute.lanes(entry.compute),
                              call_slot=partial(compute.model_call, model_name, entry.compute),
                              on_batch=BATCH_SIZE.labels(model_name).observe)

    return _batchers.get(key, create)


def _submit(task: str, model_name: str, params: dict[str, Any], values: list[Any], priority: int,
            announcement: Announcement | None = None) -> tuple[list[Any], list[float]]:
    return batcher_for(task, model_name, params).submit_measured(values, priority, announcement=announcement)


Answered = tuple[list[Any], dict[str, Any], list[float]]  # results, the model that answered, seconds per value


def _run_items(task: str, model_name: str, params: dict[str, Any], values: list[Any], priority: int,
               announcement: Announcement | None = None) -> Answered:
    """Outputs (or ItemFailure) for `values`, which model answered (falling back if needed), and each
    value's share of the worker's wall seconds (a failed call's included: its time was spent too)."""
    fallback_reason = None
    spent = [0.0] * len(values)
    try:
        model = get_model(model_name)
        results, spent = _submit(task, model_name, params, values, priority, announcement)
        model_failed = all(isinstance(r, ItemFailure) and r.code == "model_error" for r in results)
        if not model_failed:
            return results, {"name": model.info.name, "version": model.info.version}, spent
        fallback_reason = results[0].message
    except JobInputError:
        raise
    except Exception as exc:  # the model could not be loaded
        log.exception("model %s failed to load", model_name)
        fallback_reason = f"{type(exc).__name__}: {exc}"
    fallback = TASKS[task].fallback_model
    if fallback is None or fallback == model_name:
        return ([ItemFailure("model_error", f"model {plain(model_name)} failed: {fallback_reason}")] * len(values),
                {"name": plain_model_name(model_name), "version": getattr(find_model(model_name), "version", "unknown")},
                spent)
    log.warning("model %s failed (%s); answering with fallback %s", model_name, fallback_reason, fallback)
    results, fallback_spent = _submit(task, fallback, params, values, priority)
    fallback_model = get_model(fallback)
    # The failed model's seconds count too, unless it was OpenAI's (a network wait, billed in tokens).
    spent = [0.0] * len(values) if is_openai_model(model_name) else spent
    return (results, {"name": fallback_model.info.name, "version": fallback_model.info.version,
                      "fallback_from": plain(model_name), "fallback_reason": fallback_reason},
            [first + second for first, second in zip(spent, fallback_spent)])


def _run_cached(task: str, model_name: str, params: dict[str, Any], values: list[Any], priority: int,
                announcement: Announcement | None, write_through: bool = False, looked_up: bool = False,
                after_reply: AfterReply | None = None, sensitive: bool = False) -> Answered:
    """_run_items with the prediction cache around it: only misses reach the model, and what the model
    itself answers (not a fallback) is stored for every gateway and worker. `looked_up`: the values
    were looked up in L2 just before the message was sent, so only this worker's L1 is asked.
    Storing waits in `after_reply`, if given, until the callers have their answers. Sensitive jobs
    bypass the cache both ways: the shared cache (Redis) keeps its entries in clear for an hour."""
    cache = get_cache()
    entry = find_model(model_name)
    if entry is None or sensitive or not (cache.enabled and TASKS[task].cacheable):
        return _run_items(task, model_name, params, values, priority, announcement)

    def store(pairs: list[tuple[str, Any]]) -> None:
        if pairs:
            write = partial(cache.store, [key for key, _ in pairs], [value for _, value in pairs])
            if after_reply is None:
                write()
            else:
                after_reply.append(write)

    # A registered model's name is tenant-qualified, so are its keys (cache/service.py keys_for).
    keys = keys_for(task, model_name, entry.version, params, values)
    results = cache.lookup(keys, shared=not looked_up)
    missing = [i for i, value in enumerate(results) if value is MISSING]
    answered_by = {"name": plain_model_name(model_name), "version": entry.version}
    spent = [0.0] * len(values)  # a cached answer costs no model time
    if missing:
        computed, answered_by, computed_spent = _run_items(task, model_name, params, [values[i] for i in missing],
                                                           priority, announcement)
        fresh = [(keys[i], value) for i, value in zip(missing, computed) if not isinstance(value, ItemFailure)]
        for i, value, seconds in zip(missing, computed, computed_spent):
            results[i] = value
            spent[i] = seconds
        if "fallback_from" not in answered_by and not write_through:
            store(fresh)
    elif announcement is not None:
        announcement.cancel()
    if write_through and "fallback_from" not in answered_by:
        store([(key, value) for key, value in zip(keys, results) if not isinstance(value, ItemFailure)])
    return results, answered_by, spent


def _item_error(index: int, failure: ItemFailure) -> dict[str, Any]:
    return {"index": index, "error": {"code": failure.code, "message": failure.message}}


def is_sensitive(task: str, requested: bool) -> bool:
    """A job is sensitive if its sender said so or its task handles personal data by nature (a message
    from an older gateway does not say, so the catalogue is asked here too)."""
    entry = TASKS.get(task)
    return requested or bool(entry is not None and entry.sensitive)


@dataclass
class Reply:
    """What running a message leaves its task to do: publish `outcomes` ({job_id: status + result or
    error}), with the copies of `rows` when they are written behind (core/jobs/write_behind.py); then
    send those rows to be written, run `after` (filling the shared cache) and wait for the write."""

    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: write_behind.Rows | None = None
    after: AfterReply = field(default_factory=list)

    def publish(self, reply_to: str | None, message_id: str | None) -> None:
        publish_outcomes(reply_to, message_id, self.outcomes, self.rows.copies if self.rows else None)

    def finish(self) -> None:
        """Once the callers have their answers: the rows are written, the shared cache is filled, and this
        returns (the task ends and its message is acknowledged) only when the rows are written."""
        if self.rows is not None:
            self.rows.send()
        for work in self.after:
            work()
        if self.rows is not None:
            self.rows.wait()


def run_jobs(task: str, model_name: str, params: dict[str, Any], jobs: list[PredictionJob],
             priority: int = 4, first_delivery: bool = False, sensitive: bool = False) -> Reply:
    """Run every job of one message.

    `first_delivery`: no worker has started this message before (it was neither restored after a worker
    died nor retried), so its jobs are counted only if they run long (DeliveryCount), and their rows are
    written after their answers are published.
    `sensitive`: the jobs' results are sealed (or not kept) in their rows and never cached."""
    started = time.perf_counter()
    sensitive = is_sensitive(task, sensitive)
    # While this message is being prepared (cache lookup; for a redelivery, a database round trip), a batch
    # forming for the same model may wait a moment for its items instead of leaving without them.
    batcher = batcher_for(task, model_name, params) if find_model(model_name) is not None else None
    announcement = batcher.announce(sum(len(job.inputs) for job in jobs)) if batcher else None
    reply = Reply()
    try:
        _run_announced(task, model_name, params, jobs, priority, started, announcement, first_delivery, reply,
                       sensitive)
    finally:
        if announcement is not None:
            announcement.cancel()
    return reply


class DeliveryCount:
    """This delivery of a message's jobs, counted in their rows (which it creates from the records the
    messages carry: the gateway leaves that to us).

    A redelivery is counted before anything runs, so that a message that kills its worker every time is
    failed at the cap. A first delivery is counted only if its jobs are still running after
    MARK_RUNNING_AFTER_SECONDS (they then show `running` too); most finish sooner, and are then written
    once, finished and counted, in one statement (store.record_finished): one database write per job on
    every prediction's path instead of two, and after the answers (write_behind). Should a first delivery
    kill its worker before it was counted, its redeliveries still count up to the cap (one delivery later)."""

    def __init__(self, jobs: list[PredictionJob], first_delivery: bool, sensitive: bool = False) -> None:
        job_ids = [job.job_id for job in jobs]
        self.started = time.time()
        self.sensitive = frozenset(job_ids) if sensitive else frozenset()
        self.new_rows = {job.job_id: store.NewJob(**{**dict(job.record), "sensitive": job.record.sensitive or sensitive})
                         for job in jobs if job.record}
        count = partial(store.begin_attempts, job_ids, get_settings().max_deliveries, self.new_rows)
        self.before_run: Counted | None = None
        self._deferred: DeferredCall[Counted] | None = None
        if first_delivery and len(self.new_rows) == len(job_ids):
            self._deferred = _running_marks.schedule(count)
        else:  # a redelivery, or jobs whose rows only the gateway could create (older messages)
            self.before_run = count()

    def write_behind(self, records: dict[str, tuple[str, Any]],
                     usage: dict[str, WorkerTime] | None = None) -> write_behind.Rows | None:
        """A first delivery not counted yet: its rows, to be written after the answers (and counted then);
        None when they are to be recorded now (`record`): the jobs were counted meanwhile (they ran long),
        this is a redelivery, or they are sensitive."""
        if self._deferred is None or self.sensitive:
            return None
        ran, _ = self._deferred.skip_or_wait()
        if ran:  # record() reads the count from the same call
            return None
        return write_behind.Rows(records, self.new_rows, self.started, usage)

    def record(self, records: dict[str, tuple[str, Any]],
               usage: dict[str, WorkerTime] | None = None) -> set[str]:
        """Write the outcomes of the jobs that ran ({job_id: (status, payload)}), with their worker time
        where they spent any (`usage`); returns the ids recorded. The others were finished, cancelled or
        failed at the delivery cap first: their rows say so (and no time is recorded for them twice)."""
        counted = self.before_run
        if self._deferred is not None:
            ran, counted = self._deferred.skip_or_wait()
            if not ran:
                return store.record_finished(records, self.new_rows, self.started, usage)
        assert counted is not None
        runnable = counted[0]
        return store.finish_jobs({job_id: record for job_id, record in records.items() if job_id in runnable},
                                 self.sensitive, usage)


def _answer_from_rows(job_ids: list[str], outcomes: dict[str, dict[str, Any]]) -> None:
    if job_ids:
        for job in store.get_jobs(job_ids):
            result, unavailable = store.job_result(job)  # a sensitive job's result is sealed, or not kept
            if unavailable is not None and job.status == store.SUCCEEDED:
                outcomes[job.id] = {"status": store.FAILED, "error": unavailable}
            else:
                outcomes[job.id] = {"status": job.status, "result": result, "error": job.error}


def _run_announced(task: str, model_name: str, params: dict[str, Any], jobs: list[PredictionJob],
                   priority: int, started: float, announcement: Announcement | None,
                   first_delivery: bool, reply: Reply, sensitive: bool = False) -> None:
    outcomes = reply.outcomes
    count = DeliveryCount(jobs, first_delivery, sensitive)
    if count.before_run is not None:
        # Duplicate deliveries of finished jobs and jobs over the delivery cap do not run.
        runnable = count.before_run[0]
        _answer_from_rows([job.job_id for job in jobs if job.job_id not in runnable], outcomes)
        jobs = [job for job in jobs if job.job_id in runnable]
        if not jobs:
            return
    usage: dict[str, WorkerTime] = {}
    try:
        results, answered_by, spent = _results_of(task, model_name, params, jobs, priority, announcement,
                                                  reply.after, sensitive)
    except JobInputError as exc:
        error = {"code": exc.code, "message": str(exc), "details": exc.details}
        answers = {job.job_id: {"status": store.FAILED, "error": error} for job in jobs}
        records = {job_id: (store.FAILED, error) for job_id in answers}
    else:
        answers, records = _job_outcomes(task, jobs, results, answered_by,
                                         round((time.perf_counter() - started) * 1000, 2))
        if not is_openai_model(answered_by["name"]):  # OpenAI calls are billed in tokens (core/openai/usage.py)
            usage = _worker_time_per_job(task, jobs, spent, answered_by)
    reply.rows = count.write_behind(records, usage)
    if reply.rows is not None:
        # Answered before the rows are written: a row that would not be written (its job cancelled
        # meanwhile) concerns no caller, since only a caller no longer waiting can know its job's id.
        outcomes.update(answers)
        return
    recorded = count.record(records, usage)
    outcomes.update({job_id: answer for job_id, answer in answers.items() if job_id in recorded})
    _answer_from_rows([job_id for job_id in answers if job_id not in recorded], outcomes)


def _job_outcomes(task: str, jobs: list[PredictionJob], results: list[Any], answered_by: dict[str, Any],
                  worker_ms: float) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[str, Any]]]:
    """Each job's answer for its caller and its record for the job row, from the results of all inputs."""
    answers: dict[str, dict[str, Any]] = {}
    records: dict[str, tuple[str, Any]] = {}
    position = 0
    for job in jobs:
        job_results = results[position:position + len(job.inputs)]
        position += len(job.inputs)
        failures = [(i, r) for i, r in enumerate(job_results) if isinstance(r, ItemFailure)]
        outputs = [_item_error(i, r) if isinstance(r, ItemFailure) else r for i, r in enumerate(job_results)]
        if failures and not job.inline_errors:
            first_index, first = failures[0]
            error = {"code": first.code, "message": f"inputs[{first_index}]: {first.message}",
                     "details": {"items": [_item_error(i, f) for i, f in failures]}}
            records[job.job_id] = (store.FAILED, error)
            answers[job.job_id] = {"status": store.FAILED, "error": error, "model": answered_by}
            continue
        result = {"task": task, "model": answered_by, "outputs": outputs, "timings": {"worker_ms": worker_ms}}
        records[job.job_id] = (store.SUCCEEDED, result)
        answers[job.job_id] = {"status": store.SUCCEEDED, "result": result}
    return answers, records


def _worker_time_per_job(task: str, jobs: list[PredictionJob], spent: list[float],
                         answered_by: dict[str, Any]) -> dict[str, WorkerTime]:
    """Each job's model time: the shares of its items (`spent`, one per input of every job, in order),
    charged to the model that answered (a fallback's time is the fallback's, not the model asked for)."""
    usage: dict[str, WorkerTime] = {}
    position = 0
    kind = TASKS[task].queue  # gpu | nlp: the worker kind whose seconds are priced
    spender = answered_by["name"] if "fallback_from" in answered_by else None
    for job in jobs:
        shares = spent[position:position + len(job.inputs)]
        position += len(job.inputs)
        computed = sum(1 for share in shares if share > 0)  # cache hits cost nothing
        if computed:
            usage[job.job_id] = worker_time(task, kind, computed, sum(shares), spender)
    return usage


def _results_of(task: str, model_name: str, params: dict[str, Any], jobs: list[PredictionJob], priority: int,
                announcement: Announcement | None,
                after_reply: AfterReply | None = None, sensitive: bool = False) -> Answered:
    """One result (or ItemFailure) per input of every job, in order, which model answered, and each
    input's share of the model time."""
    if answers_per_job(find_model(model_name), params):
        results, answered_by, spent = _run_items(task, model_name, params, [job.inputs for job in jobs], priority,
                                                 announcement)
        return ([item for job, result in zip(jobs, results)
                 for item in (result if isinstance(result, list) else [result] * len(job.inputs))],
                answered_by,
                # A job answered as a unit: its call's share spread over its inputs.
                [seconds / max(1, len(job.inputs)) for job, seconds in zip(jobs, spent) for _ in job.inputs])
    # Cache-warming jobs re-store even what this worker's L1 still holds: L2 is what they refill.
    write_through = any(job.warm for job in jobs)
    # What a gateway looked up in L2 just before sending is not looked up there again.
    looked_up = all(job.looked_up for job in jobs)
    return _run_cached(task, model_name, params, [v for job in jobs for v in job.inputs], priority,
                       announcement, write_through, looked_up, after_reply, sensitive)
