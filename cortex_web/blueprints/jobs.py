"""GET /api/v1/jobs/{id}: a job is visible to its owner and to admins; anyone else gets a 404.

A prediction answered a moment ago may not have its row yet (a worker writes it after the answer,
core/jobs/write_behind.py): it is shown from the copy published with its answer meanwhile."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify

from cortex_tasks.core.auth.roles import READ
from cortex_tasks.core.jobs.store import get_job, job_to_api
from cortex_tasks.core.jobs.write_behind import job_from_copy
from cortex_web.auth import current_principal, is_admin, require
from cortex_web.errors import ApiError

bp = Blueprint("jobs", __name__, url_prefix="/api/v1")


def visible_job(job_id: str):
    # Row, then the copy of a row still being written behind, then the row again: the writer writes the
    # row before it deletes the copy, so a row written between the first two reads is found by the third.
    job = get_job(job_id) or job_from_copy(job_id) or get_job(job_id)
    principal = current_principal()
    if job is None or (job.owner != principal.key_id and not is_admin(principal)):
        raise ApiError(404, "job_not_found", f"No job {job_id!r} is visible to this key.")
    return job


@bp.get("/jobs/<job_id>")
@require(READ)
def show_job(job_id: str) -> Response:
    return jsonify(job_to_api(visible_job(job_id)))
