"""Write-behind of finished predictions' rows: the answer leaves first, its row follows.

A prediction answered within its caller's wait still gets its row (the durable record behind
GET /jobs/{id}), but its caller need not wait for that write: a PostgreSQL round trip and commit, 2 to 4 ms
of every answer's path on a two-core machine. So a worker publishes a message's outcomes first and hands the
jobs' rows to its process's RowWriter, which writes every row handed to it meanwhile in one statement
(store.record_finished): under load, many messages' rows per round trip instead of one each.

Nothing is lost by answering first. The task waits for its rows' write before it returns, and its message is
acknowledged only after that (acks_late): a worker that dies in between has the message delivered again, and
that delivery writes the rows. A write that fails (PostgreSQL away) fails the task, which is retried like any
task that could not reach the database.

Nor does a job go missing meanwhile: the outcomes are published together with a copy of each row (one
pipeline, one round trip), which GET /jobs/{id} reads while the row is not written yet; the copy is deleted
once it is (and expires after COPY_SECONDS anyway). Sensitive jobs are not written behind: their copies would
hold personal data in clear in Redis.

No timer: a lone answer's row is written at once, and while one write runs, the rows handed over meanwhile
gather for the next (the rule of the gateway's coalescer and the worker's batcher: never wait when idle).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

import orjson
import redis

from cortex_tasks.core.jobs import store
from cortex_tasks.core.jobs.outcomes import COPY_SECONDS, copy_key, redis_client
from cortex_tasks.core.storage.tables import Job
from cortex_tasks.core.tenancy import current_tenant
from cortex_tasks.core.usage.worker_time import WorkerTime

log = logging.getLogger(__name__)


class Rows:
    """A message's rows to write behind its answers: their copies, to publish with the outcomes; `send`
    hands them to the writer once the outcomes are out, `wait` waits for their write."""

    def __init__(self, outcomes: dict[str, tuple[str, Any]], records: dict[str, store.NewJob], started: float,
                 usage: dict[str, WorkerTime] | None = None) -> None:
        # The writer's thread sees no tenant (core/tenancy.py): each record names its own before it leaves.
        self.records = {job_id: record if record.tenant is not None
                        else dataclasses.replace(record, tenant=current_tenant())
                        for job_id, record in records.items() if job_id in outcomes}
        self.outcomes, self.started, self.usage = outcomes, started, usage or {}
        self.written: Future[set[str]] = Future()
        finished = datetime.now(UTC).isoformat()
        self.copies = {job_id: _copy(job_id, self.records[job_id], status, payload, started, finished)
                       for job_id, (status, payload) in outcomes.items()}

    def send(self) -> None:
        # Not before the outcomes are published: the write would compete with the publishing for the CPU.
        _writer.hand_over(self)

    def wait(self) -> set[str]:
        """The ids written (a job missing from it was finished or cancelled before); raises what the write
        raised."""
        return self.written.result()


def _copy(job_id: str, record: store.NewJob, status: str, payload: Any, started: float, finished: str) -> bytes:
    """The row as record_finished writes it, in the columns job_to_api reads (and the owner and tenant that
    decide who may read it)."""
    began = datetime.fromtimestamp(started, UTC).isoformat()
    succeeded = status == store.SUCCEEDED
    return orjson.dumps({
        "id": job_id, "owner": record.owner, "tenant": record.owning_tenant(), "kind": record.kind,
        "task": record.task, "model": record.model, "status": status, "priority": record.priority,
        "progress_total": record.total, "progress_done": record.total if succeeded else 0, "attempts": 1,
        "created_at": began, "started_at": began, "finished_at": finished,
        "result": payload if succeeded else None, "error": None if succeeded else payload})


def job_from_copy(job_id: str) -> Job | None:
    """A job whose row is still being written, from its copy in Redis, if it belongs to the tenant in scope
    (a job of another tenant is None, as get_job says of its row)."""
    try:
        raw = redis_client().get(copy_key(job_id))
    except redis.RedisError:
        return None
    if raw is None:
        return None
    columns = orjson.loads(raw)
    if columns.pop("tenant") != current_tenant():
        return None
    for moment in ("created_at", "started_at", "finished_at"):
        columns[moment] = datetime.fromisoformat(columns[moment])
    return Job(**columns)


class RowWriter:
    """Writes the rows handed to it, everything handed meanwhile in one statement, on a thread of its own."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._handed: list[Rows] = []
        self._thread: threading.Thread | None = None
        self._pid = 0

    def hand_over(self, rows: Rows) -> None:
        with self._condition:
            self._ensure_thread()
            self._handed.append(rows)
            self._condition.notify()

    def _ensure_thread(self) -> None:
        # A forked pool process inherits the object but not the thread (nor the rows handed to it).
        if self._pid != os.getpid() or self._thread is None:
            self._handed = []
            self._thread = threading.Thread(target=self._write_forever, name="cortex-row-writer", daemon=True)
            self._pid = os.getpid()
            self._thread.start()

    def _write_forever(self) -> None:
        while True:
            with self._condition:
                while not self._handed:
                    self._condition.wait()
                taken, self._handed = self._handed, []
            self._write(taken)

    @staticmethod
    def _write(taken: list[Rows]) -> None:
        outcomes: dict[str, tuple[str, Any]] = {}
        records: dict[str, store.NewJob] = {}
        started: dict[str, float] = {}
        usage: dict[str, WorkerTime] = {}
        for rows in taken:
            outcomes.update(rows.outcomes)
            records.update(rows.records)
            started.update(dict.fromkeys(rows.outcomes, rows.started))
            usage.update(rows.usage)
        try:
            written = store.record_finished(outcomes, records, started, usage)
        except BaseException as exc:  # noqa: BLE001 - each waiting task raises it (and is retried)
            for rows in taken:
                rows.written.set_exception(exc)
            return
        for rows in taken:
            rows.written.set_result(written & rows.outcomes.keys())
        try:
            redis_client().delete(*(copy_key(job_id) for job_id in outcomes))
        except redis.RedisError:
            log.warning("could not delete the copies of %d written rows; they expire in %d s",
                        len(outcomes), COPY_SECONDS)


_writer = RowWriter()
