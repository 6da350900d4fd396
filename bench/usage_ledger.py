"""What the usage ledger costs on a prediction's path: recording a message's finished jobs (store.record_finished,
the one statement a worker writes per coalesced message) with each job's worker time, against the same
statement without it, in the same run on the same database.

The ledger rows are written by the recording statement itself (a data-modifying CTE: core/usage/worker_time.py),
so there is no extra round trip: what remains is the rows themselves (one per job, with its indexes and
tenant key). The ratio is the statement's rate with the ledger over its rate without it. Messages of 8 jobs
of 4 items, rounds alternating, medians of the rounds quoted.

Starts an embedded PostgreSQL and Redis (unless DATABASE_URL / REDIS_URL are set) and stops them at the end.
"""
from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

from bench._harness import machine, services

JOBS_PER_MESSAGE = 8


def _message(with_usage: bool) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    from cortex_tasks.core.jobs import store
    from cortex_tasks.core.usage.worker_time import worker_time

    ids = [str(uuid.uuid4()) for _ in range(JOBS_PER_MESSAGE)]
    records = {job_id: store.NewJob(owner="bench-key", kind="predict", task="embed", model="all-MiniLM-L6-v2",
                                    total=4, tenant="default") for job_id in ids}
    outcomes = {job_id: (store.SUCCEEDED, {"outputs": [[0.1] * 8] * 4}) for job_id in ids}
    usage = {job_id: worker_time("embed", "gpu", 4, 0.012) for job_id in ids} if with_usage else None
    return outcomes, records, usage


def _rate(messages: int, with_usage: bool) -> float:
    from cortex_tasks.core.jobs import store

    prepared = [_message(with_usage) for _ in range(messages)]
    started = time.perf_counter()
    for outcomes, records, usage in prepared:
        recorded = store.record_finished(outcomes, records, time.time(), usage)
        assert len(recorded) == JOBS_PER_MESSAGE
    return messages / (time.perf_counter() - started)


def run(quick: bool) -> dict[str, Any]:
    messages, rounds = (200, 3) if quick else (1000, 5)
    results: dict[str, Any] = {"machine": machine(), "jobs_per_message": JOBS_PER_MESSAGE, "messages": messages}
    with services():
        _rate(50, True)  # warm the connection pool and the statement caches
        _rate(50, False)
        plain, ledger = [], []
        for _ in range(rounds):
            plain.append(_rate(messages, False))
            ledger.append(_rate(messages, True))
        from sqlalchemy import text

        from cortex_tasks.core.storage.db import session_scope
        from cortex_tasks.core.tenancy import tenant_scope

        with tenant_scope("default"), session_scope() as session:
            rows = session.execute(text("SELECT count(*) FROM worker_usage")).scalar()
    results["without_ledger_messages_per_second"] = round(statistics.median(plain), 1)
    results["with_ledger_messages_per_second"] = round(statistics.median(ledger), 1)
    results["ratio"] = round(results["with_ledger_messages_per_second"]
                             / results["without_ledger_messages_per_second"], 3)
    results["ledger_rows"] = rows
    print(f"record_finished, {JOBS_PER_MESSAGE} jobs per message: without the ledger "
          f"{results['without_ledger_messages_per_second']} msg/s, with it {results['with_ledger_messages_per_second']} "
          f"msg/s (ratio {results['ratio']})")
    return results
