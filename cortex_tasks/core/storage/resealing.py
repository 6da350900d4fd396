"""Re-sealing stored sensitive values under the current data key, so that an old key can be retired.

Rotation (core/storage/sealing.py): put the new key first in CORTEX_DATA_KEYS and keep the old one after
it; new values are sealed under the new key at once and old ones still open. `cortex data-keys reseal`
then rewrites every value still sealed under another key id; once it reports none left, the old key can
be removed. Rows are read and rewritten a page at a time, each page in its own transaction. No guard
against concurrent writers is needed: params are written when a job is created and a result once, when
it finishes, so a value found sealed is final.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.sealing import (
    SealedValueError,
    Sealer,
    chunk_inputs_place,
    current_sealer,
    reseal,
)
from cortex_tasks.core.storage.tables import BatchChunk, Job

PAGE_ROWS = 200


@dataclass
class ResealReport:
    kid: str
    jobs: int = 0
    batch_chunks: int = 0
    # Values that could not be opened (their key is gone, or they were altered): {where: code}.
    failed: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kid": self.kid, "jobs": self.jobs, "batch_chunks": self.batch_chunks, "failed": self.failed}


def _sealed_elsewhere(column: Any, kid: str) -> ColumnElement[bool]:
    """A JSONB column (or path) holding a sealed envelope whose key id is not `kid`."""
    return and_(column["sealed"].astext == "1", column["kid"].astext != kid)


def _resealed(value: Any, where: str, sealer: Sealer, report: ResealReport) -> Any | None:
    try:
        return reseal(value, where, sealer)
    except SealedValueError as exc:  # counted and left as it is; the others still go on
        report.failed[where] = exc.code
        return None


def reseal_jobs(sealer: Sealer, report: ResealReport) -> None:
    after = ""
    while True:
        with session_scope() as session:
            rows = session.execute(
                select(Job.id, Job.params, Job.result)
                .where(Job.id > after, or_(_sealed_elsewhere(Job.params, sealer.current_kid),
                                           _sealed_elsewhere(Job.result, sealer.current_kid),
                                           _sealed_elsewhere(Job.params["params"], sealer.current_kid)))
                .order_by(Job.id).limit(PAGE_ROWS)).all()
            for row in rows:
                values: dict[str, Any] = {}
                params = _resealed(row.params, f"jobs/{row.id}/params", sealer, report)
                if params is not None:
                    values["params"] = params
                elif isinstance(row.params, dict) and "params" in row.params:  # a batch job's own params
                    inner = _resealed(row.params["params"], f"jobs/{row.id}/params/params", sealer, report)
                    if inner is not None:
                        values["params"] = {**row.params, "params": inner}
                result = _resealed(row.result, f"jobs/{row.id}/result", sealer, report)
                if result is not None:
                    values["result"] = result
                if values:
                    report.jobs += session.execute(
                        update(Job).where(Job.id == row.id)
                        .values(**values).execution_options(synchronize_session=False)).rowcount
        if len(rows) < PAGE_ROWS:
            return
        after = rows[-1].id


def reseal_chunks(sealer: Sealer, report: ResealReport) -> None:
    after: tuple[str, int] = ("", -1)
    while True:
        with session_scope() as session:
            rows = session.execute(
                select(BatchChunk.job_id, BatchChunk.chunk_index, BatchChunk.inputs)
                .where(or_(BatchChunk.job_id > after[0],
                           and_(BatchChunk.job_id == after[0], BatchChunk.chunk_index > after[1])),
                       _sealed_elsewhere(BatchChunk.inputs, sealer.current_kid))
                .order_by(BatchChunk.job_id, BatchChunk.chunk_index).limit(PAGE_ROWS)).all()
            for row in rows:
                inputs = _resealed(row.inputs, chunk_inputs_place(row.job_id, row.chunk_index), sealer, report)
                if inputs is not None:
                    report.batch_chunks += session.execute(
                        update(BatchChunk)
                        .where(BatchChunk.job_id == row.job_id, BatchChunk.chunk_index == row.chunk_index)
                        .values(inputs=inputs).execution_options(synchronize_session=False)).rowcount
        if len(rows) < PAGE_ROWS:
            return
        after = (rows[-1].job_id, rows[-1].chunk_index)


def reseal_all() -> ResealReport:
    """Every sealed job field and batch chunk under the current key. Sealed batch result objects are not
    rewritten: they expire with their batch (CORTEX_BATCH_RESULT_RETENTION_DAYS), so keep an old key at
    least that long."""
    sealer = current_sealer()
    if sealer is None:
        raise RuntimeError("no data key is configured (CORTEX_DATA_KEYS): nothing to reseal with")
    report = ResealReport(sealer.current_kid)
    reseal_jobs(sealer, report)
    reseal_chunks(sealer, report)
    return report
