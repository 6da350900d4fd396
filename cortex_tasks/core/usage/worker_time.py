"""Worker time of Cortex's own models, per job: the wall seconds of the model calls that answered the job's
items, a batched call's seconds shared out over the items it held (inference/batcher.py), so a call
that answered 32 items of 5 jobs is counted once. Cache hits cost nothing and are not counted.

A job's time is written in the same statement that records its outcome (core/jobs/store.py): a
data-modifying CTE inserts the ledger rows for the job rows the statement really changed, with their
tenant, owner (the calling key's id) and model taken from those rows. A redelivered message therefore
cannot count a job twice, and a prediction costs no extra round trip for its ledger row. Jobs that run one
at a time (core/jobs/running.run_job: vector upserts, document indexing) count their model calls on a
ModelClock and training runs their stretch on the worker; both are written in the transaction that
records the outcome (store.finish_job / fail_job), with the same guard.
"""
from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any, Self

from cortex_tasks.core.settings import get_settings


@dataclass(frozen=True)
class WorkerTime:
    task: str
    worker_kind: str  # the queue the model ran from: gpu | nlp
    items: int  # items the model computed (not answered from a cache)
    seconds: float
    cost_usd: float
    # The model that spent the time, where it is not the job's own (a fallback answered for it).
    model: str | None = None


def worker_time(task: str, worker_kind: str, items: int, seconds: float, model: str | None = None) -> WorkerTime:
    """The time priced at the configured price of its worker kind (CORTEX_WORKER_SECOND_PRICES), now:
    a price change applies to the jobs recorded after it, as on a bill."""
    price = get_settings().worker_second_prices.get(worker_kind, 0.0)
    return WorkerTime(task, worker_kind, items, seconds, round(seconds * price, 10), model)


def usage_columns(job_ids: list[str], usage: dict[str, WorkerTime]) -> dict[str, Any]:
    """The bound arrays of WITH_LEDGER_ROWS, for the jobs of `job_ids` that spent model time."""
    timed = [job_id for job_id in job_ids if job_id in usage]
    return {"u_ids": timed, "u_tasks": [usage[job_id].task for job_id in timed],
            "u_models": [usage[job_id].model for job_id in timed],
            "u_kinds": [usage[job_id].worker_kind for job_id in timed],
            "u_items": [usage[job_id].items for job_id in timed],
            "u_seconds": [usage[job_id].seconds for job_id in timed],
            "u_costs": [usage[job_id].cost_usd for job_id in timed]}


def with_ledger_rows(recording_statement: str) -> str:
    """`recording_statement` (an INSERT or UPDATE of jobs that ends `RETURNING id, tenant, owner, model`)
    wrapped so that the jobs it recorded get their worker_usage rows in the same statement; it still
    returns the recorded ids."""
    return (
        f"WITH recorded AS ({recording_statement}), "  # nosec B608 - constant SQL, values bound
        "ledger AS (INSERT INTO worker_usage (tenant, job_id, owner, model, task, worker_kind, items, "
        "worker_seconds, cost_usd, created_at) "
        "SELECT r.tenant, r.id, r.owner, coalesce(u.model, r.model, u.task), u.task, u.kind, u.items, u.seconds, "
        "u.cost, now() FROM recorded AS r JOIN unnest(CAST(:u_ids AS text[]), CAST(:u_tasks AS text[]), "
        "CAST(:u_models AS text[]), CAST(:u_kinds AS text[]), CAST(:u_items AS int[]), "
        "CAST(:u_seconds AS float8[]), CAST(:u_costs AS float8[])) "
        "AS u(id, task, model, kind, items, seconds, cost) ON u.id = r.id) "
        "SELECT id FROM recorded"
    )


# The clock of the job this thread (or this task's context) is running, if it is one that counts its
# model calls itself: jobs whose model calls go through neither the batcher nor the chunk runner.
_RUNNING_CLOCK: ContextVar[ModelClock | None] = ContextVar("cortex_model_clock", default=None)


class ModelClock:
    """The model calls one job makes while it runs, where nothing else measures them (a vector upsert's or
    a document indexing's embeddings): their items and wall seconds per model. The code that calls a
    model charges it (`charge_model_call`) to the clock of the job in progress, which the job's runner
    opens with `with clock:` and turns into ledger rows (`usage`) when it records the job's outcome.

    A context variable rather than a parameter: the embeddings of document indexing are computed by a
    Haystack component, several calls away from the task (a thread Haystack starts copies the context,
    and the clock in it is the same object)."""

    def __init__(self, task: str, worker_kind: str) -> None:
        self.task, self.worker_kind = task, worker_kind
        self._spent: dict[str, tuple[int, float]] = {}  # model: (items, seconds)
        self._tokens: list[Token[ModelClock | None]] = []

    def charge(self, model: str, items: int, seconds: float) -> None:
        spent_items, spent_seconds = self._spent.get(model, (0, 0.0))
        self._spent[model] = (spent_items + items, spent_seconds + seconds)

    def usage(self) -> list[WorkerTime]:
        """One ledger entry per model that computed items, priced now."""
        return [worker_time(self.task, self.worker_kind, items, seconds, model)
                for model, (items, seconds) in self._spent.items() if items > 0]

    def __enter__(self) -> Self:
        self._tokens.append(_RUNNING_CLOCK.set(self))
        return self

    def __exit__(self, *exc_info: object) -> None:
        _RUNNING_CLOCK.reset(self._tokens.pop())


def charge_model_call(model: str, items: int, seconds: float) -> None:
    """A model call's items and seconds, charged to the running job's clock; nothing when the job has none
    (its time is measured elsewhere, or not counted: a vector search's query embedding)."""
    clock = _RUNNING_CLOCK.get()
    if clock is not None:
        clock.charge(model, items, seconds)
