"""Stream reports (docs/alerts.md): POST /api/v1/reports {stream, from, to} queues one (inference_user+,
as any job); GET /api/v1/reports and /reports/{id} list and read them (reader+), /reports/{id}/html and
/reports/{id}/data download the stored page and its data."""
from __future__ import annotations

import re
from datetime import UTC

from flask import Blueprint, Response, jsonify, request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from cortex_tasks.core.alerting import report_records
from cortex_tasks.core.auth.roles import PREDICT, READ
from cortex_tasks.core.settings import get_settings
from cortex_web.audit import audited
from cortex_web.auth import current_principal, require
from cortex_web.errors import ApiError
from cortex_web.request_body import parse_body, positive_int_arg

bp = Blueprint("reports", __name__, url_prefix="/api/v1")
MAX_PAGE_SIZE = 200
STREAM_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class CreateReportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, populate_by_name=True)

    stream: str = Field(pattern=STREAM_NAME)
    start: AwareDatetime = Field(alias="from", description="Start of the period (ISO 8601 with a zone).")
    end: AwareDatetime = Field(alias="to", description="End of the period, excluded.")


REQUEST_BODIES: dict[tuple[str, str], type[BaseModel]] = {("post", "/api/v1/reports"): CreateReportRequest}


@bp.post("/reports")
@require(PREDICT)
@audited("report.request")
def create() -> tuple[Response, int]:
    """Queue a report of one stream over [from, to); poll GET /api/v1/reports/{id} until `ready`."""
    body = parse_body(CreateReportRequest, get_settings().max_json_depth)
    try:
        start, end = body.start.astimezone(UTC), body.end.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:00:00-05:00 is past the last representable UTC moment
        raise ApiError(422, "invalid_request", "`from` or `to` is out of range.", {"field": "to"}) from None
    record = report_records.request_report(body.stream, start, end, requested_by=current_principal().key_id)
    return jsonify(record), 202


@bp.get("/reports")
@require(READ)
def index() -> Response:
    """The tenant's reports, newest first: ?stream=, ?page= and ?size= (at most 200, default 50)."""
    stream = request.args.get("stream")
    if stream is not None and not re.fullmatch(STREAM_NAME, stream):
        raise ApiError(422, "invalid_query", "?stream= is a stream name (letters, digits, '.', '-', '_'; 1..64).")
    page, size = positive_int_arg("page", 1), positive_int_arg("size", 50, MAX_PAGE_SIZE)
    reports, more = report_records.list_reports(stream, page, size)
    return jsonify({"reports": reports, "page": page, "size": size, "next_page": page + 1 if more else None})


@bp.get("/reports/<report_id>")
@require(READ)
def show(report_id: str) -> Response:
    """One report: status, summary and the links of its HTML page and JSON data once ready."""
    return jsonify(report_records.get_report(report_id))


@bp.get("/reports/<report_id>/html")
@require(READ)
def html_page(report_id: str) -> Response:
    """The report as one HTML page (charts embedded)."""
    return Response(report_records.report_content(report_id, "html"), mimetype="text/html",
                    headers={"Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'"})


@bp.get("/reports/<report_id>/data")
@require(READ)
def data(report_id: str) -> Response:
    """The report's figures as JSON (what the page shows)."""
    return Response(report_records.report_content(report_id, "json"), mimetype="application/json")


