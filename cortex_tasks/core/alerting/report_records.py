"""Stream reports as the gateway asks for and reads them; runtime/alerting/reports.py writes them."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from cortex_tasks.core.contracts.alert_messages import ReportMessage
from cortex_tasks.core.contracts.task_names import REPORTS_WRITE_REPORT
from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.queues import ALERTS
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.object_store import get_object_store
from cortex_tasks.core.storage.tables import StreamDeclaration, StreamReport
from cortex_tasks.core.tenancy import current_tenant

MAX_PERIOD = timedelta(days=93)  # a quarter: what one report reads must fit a worker's memory


def report_record(row: StreamReport) -> dict[str, Any]:
    ready = row.status == "ready"
    return {"id": row.id, "stream": row.stream, "from": row.period_start.isoformat(), "to": row.period_end.isoformat(),
            "trigger": row.trigger, "status": row.status, "summary": row.summary, "error": row.error,
            "requested_by": row.requested_by, "created_at": row.created_at.isoformat(),
            "finished_at": row.finished_at.isoformat() if row.finished_at else None,
            "links": {"self": f"/api/v1/reports/{row.id}",
                      "html": f"/api/v1/reports/{row.id}/html" if ready else None,
                      "data": f"/api/v1/reports/{row.id}/data" if ready else None}}


def _not_found(report_id: str) -> CortexError:
    return CortexError("report_not_found", f"No report {report_id!r}.", status=404)


def request_report(stream: str, start: datetime, end: datetime, *, requested_by: str | None,
                   trigger: str = "request") -> dict[str, Any]:
    """Queue a report of `stream` over [start, end); 404 for a stream the tenant has not declared (looked up
    first: the resource a request names, then what it asks of it)."""
    with session_scope() as session:
        if session.execute(select(StreamDeclaration.id).where(StreamDeclaration.name == stream)).scalar() is None:
            raise CortexError("stream_not_found", f"No stream named {stream!r}.", {"stream": stream}, status=404)
    if start.year < 1971 or end.year > 9998:
        raise CortexError("invalid_request", "`from` and `to` must lie between 1971 and 9998.", {"field": "from"})
    if end <= start:
        raise CortexError("invalid_request", "`from` must be before `to`.", {"field": "to"})
    if end - start > MAX_PERIOD:
        raise CortexError("invalid_request", f"A report covers at most {MAX_PERIOD.days} days.", {"field": "to"})
    report_id = str(uuid.uuid4())
    with session_scope() as session:
        row = StreamReport(id=report_id, stream=stream, period_start=start, period_end=end, trigger=trigger,
                           status="queued", requested_by=requested_by)
        session.add(row)
        session.flush()
        session.refresh(row)
        record = report_record(row)
    send_report(current_tenant(), report_id)
    return record


def send_report(tenant: str, report_id: str) -> None:
    from cortex_tasks import app as celery_app

    celery_app.send_task(REPORTS_WRITE_REPORT, queue=ALERTS, ignore_result=True,
                         kwargs=ReportMessage(tenant=tenant, report_id=report_id).to_kwargs())


def list_reports(stream: str | None, page: int, size: int) -> tuple[list[dict[str, Any]], bool]:
    statement = select(StreamReport)
    if stream is not None:
        statement = statement.where(StreamReport.stream == stream)
    statement = statement.order_by(StreamReport.created_at.desc(), StreamReport.id).offset((page - 1) * size).limit(size + 1)
    with session_scope() as session:
        rows = session.execute(statement).scalars().all()
        return [report_record(row) for row in rows[:size]], len(rows) > size


def _row(report_id: str) -> StreamReport:
    try:
        uuid.UUID(report_id)
    except ValueError:
        raise _not_found(report_id) from None
    with session_scope() as session:
        row = session.execute(select(StreamReport).where(StreamReport.id == report_id)).scalar()
    if row is None:
        raise _not_found(report_id)
    return row


def get_report(report_id: str) -> dict[str, Any]:
    return report_record(_row(report_id))


def report_content(report_id: str, which: str) -> bytes:
    """The stored HTML page or JSON data of a ready report; 409 while it is being written."""
    row = _row(report_id)
    if row.status != "ready":
        raise CortexError("report_not_ready", f"Report {report_id!r} is {row.status}.", {"status": row.status},
                          status=409)
    name = row.html_key if which == "html" else row.json_key
    assert name is not None
    return get_object_store().get(name)
