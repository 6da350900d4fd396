"""The model registry over HTTP: models, versions, model cards, canary vs production, promote, rollback.

Reading needs `read`; promoting and rolling back need `deploy`. A promotion is blue-green: the gateway
records a pending deployment and sends `cortex.registry.activate_version` to a worker, which verifies
the version is ready before traffic moves (the old production version serves until then). The answer
comes within the wait budget (200), or as a job to poll (202).

Registered models belong to the caller's tenant (the registry reads within it): another tenant's model
answers 404 like a missing one, and the list shows the bundled catalogue models (shared by every tenant)
beside the tenant's own. Bundled models are read-only: promoting or rolling one back is a 403
`read_only_model`. A key limited to named models may deploy only those.
"""
from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint, Response, jsonify, request, url_for
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cortex_tasks.core.auth.permissions import check_allowed
from cortex_tasks.core.auth.roles import DEPLOY, READ
from cortex_tasks.core.catalogue import MODELS, TASKS
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import ActivationMessage
from cortex_tasks.core.jobs import store
from cortex_tasks.core.jobs.store import NewJob
from cortex_tasks.core.queues import MAINTENANCE, priority_of
from cortex_tasks.core.registry import routing, service, stats
from cortex_tasks.core.registry.model_card import render_model_card
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.tenancy import current_tenant
from cortex_web.audit import audited
from cortex_web.auth import current_principal, require
from cortex_web.blueprints.training import runs_summary  # experiment tracking: the model's training runs
from cortex_web.dispatch import submit_and_wait
from cortex_web.errors import ApiError
from cortex_web.metrics import register_shared_collector
from cortex_web.request_body import parse_body

bp = Blueprint("models", __name__, url_prefix="/api/v1")

# Per-version request, error and latency series on /metrics, read from Redis at scrape time
# (registered once per process, when this module is first imported).
register_shared_collector(stats.ModelVersionCollector())


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    # canary and production are deployments; staging and archived retire a canary or an old version.
    stage: Literal["canary", "production", "staging", "archived"]
    traffic: float | None = Field(default=None, ge=0, le=100)
    wait: float | None = Field(default=None, ge=0, le=60)

    @field_validator("wait", "traffic", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a number")  # noqa: TRY004 (pydantic reports ValueError)
        return float(value) if isinstance(value, int) else value


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    to_version: int | None = Field(default=None, ge=1)


REQUEST_BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("post", "/api/v1/models/{name}/versions/{version}/promote"): PromoteRequest,
    ("post", "/api/v1/models/{name}/rollback"): RollbackRequest,
}


def _stats(name: str, version: int | str) -> dict[str, Any]:
    return stats.read(name, version)


def _catalogue_view(name: str) -> dict[str, Any]:
    """A bundled model that was never registered: its one version serves everyone."""
    entry = MODELS[name]
    view = {"name": name, "task": entry.task, "source": "catalogue", "description": entry.description,
            "versions": [{"version": entry.version, "stage": "production"}],
            "serving": {"production": {"version": entry.version, "stats": _stats(name, entry.version)},
                        "canary": None}}
    if entry.card:  # where its weights come from, and their sha256 (checked when they load)
        view["card"] = dict(entry.card)
    return view


@bp.get("/models")
@require(READ)
def list_models() -> Response:
    """The tenant's registered models (with their production and canary versions) and the bundled
    catalogue models, which every tenant shares."""
    registered = [{**item, "source": "registry"} for item in service.list_models()]
    names = {item["name"] for item in registered}
    bundled = [{"name": name, "task": entry.task, "source": "catalogue", "latest_version": entry.version,
                "production": {"version": entry.version}, "canary": None, "description": entry.description}
               for name, entry in sorted(MODELS.items()) if name not in names]
    return jsonify({"models": registered + bundled})


@bp.get("/models/<name>")
@require(READ)
def show_model(name: str) -> Response:
    """Versions, stages, metrics, deployment history, and canary beside production with live figures."""
    try:
        summary = service.model_summary(name)
    except service.ModelNotFound:
        if name in MODELS:
            return jsonify(_catalogue_view(name))
        raise ApiError(404, "model_not_found", f"No model named {name!r}.",
                       {"valid": sorted({*MODELS, *(item["name"] for item in service.list_models())})}) from None
    versions = service.list_versions(name)
    history = service.deployments(name)
    by_number = {record.version: record for record in versions}
    serving: dict[str, Any] = {"production": None, "canary": None}
    for record in versions:
        if record.stage in (service.PRODUCTION, service.CANARY):
            body = record.as_dict()
            body["stats"] = _stats(name, record.version)
            body["card"] = render_model_card(summary, body, [d for d in history if d["version"] == record.version],
                                             body["stats"])
            serving[record.stage] = body
    listed = []
    for record in versions:
        body = record.as_dict()
        body["stats"] = _stats(name, record.version)
        body["card_url"] = url_for("models.version_card", name=name, version=record.version)
        listed.append(body)
    pending = next((item for item in history if item["status"] == "pending"), None)
    return jsonify({**summary, "source": "registry", "serving": serving, "pending_deployment": pending,
                    "versions": listed, "deployments": history,
                    "latest_version_number": max(by_number) if by_number else None,
                    "training_runs": runs_summary(name)})


def _version_body(name: str, version: int) -> dict[str, Any]:
    record = service.get_version(name, version)
    body = record.as_dict()
    body["stats"] = _stats(name, version)
    history = service.deployments(name, version=version)
    body["deployments"] = history
    body["card"] = render_model_card(service.model_summary(name), body, history, body["stats"])
    return body


@bp.get("/models/<name>/versions/<int:version>")
@require(READ)
def show_version(name: str, version: int) -> Response:
    """One version: artifact, metrics, parameters, data fingerprint, stage, figures and model card."""
    return jsonify(_version_body(name, version))


@bp.get("/models/<name>/versions/<int:version>/card")
@require(READ)
def version_card(name: str, version: int) -> Response:
    """The version's model card as Markdown."""
    return Response(_version_body(name, version)["card"], mimetype="text/markdown")


@bp.get("/models/<name>/route")
@require(READ)
def route_for_caller(name: str) -> Response:
    """Which version answers the calling key for this model (canary routing is sticky per key)."""
    service.check_model_name(name)
    choice = routing.choose_version(name, current_principal().key_id)
    if choice is None:
        if name in MODELS:
            return jsonify({"model": name, "version": MODELS[name].version, "stage": "production",
                            "source": "catalogue"})
        raise ApiError(404, "not_deployed", f"Model {name!r} has no production or canary version.")
    return jsonify({**choice.as_dict(), "source": "registry"})


def _deployable(name: str) -> None:
    """Before changing a model's deployment: the key may use it, and it is not a bundled model (shared by
    every tenant, so no tenant may change it; a tenant's own registered model of that name is its own)."""
    check_allowed(current_principal(), None, name)
    if name in MODELS and service.registered_task(name) is None:
        raise ApiError(403, "read_only_model", f"{name!r} is a bundled model, shared and read-only: it has "
                       "no versions to promote or roll back.", {"model": name})


def _activation_queue(task: str) -> str:
    entry = TASKS.get(task)
    return entry.queue if entry is not None else MAINTENANCE


NOT_QUEUED = {"code": "not_queued", "message": "The activation job could not be queued."}


def _never_queued(job_id: str) -> bool:
    """The job has no row (refused before it was written) or failed in the gateway while being queued."""
    try:
        job = store.get_job(job_id)
    except Exception:  # noqa: BLE001  (PostgreSQL away too: leave it to the sweep and the expiry)
        return False
    return job is None or job.status == store.FAILED


@bp.post("/models/<name>/versions/<int:version>/promote")
@require(DEPLOY)
@audited("model.promote")
def promote(name: str, version: int) -> tuple[Response, int]:
    """Promote to canary (with a traffic %) or production (blue-green); or retire to staging/archived."""
    body = parse_body(PromoteRequest, get_settings().max_json_depth)
    _deployable(name)
    actor = current_principal().key_id
    if body.stage in (service.STAGING, service.ARCHIVED):
        if body.traffic is not None:
            raise ApiError(422, "invalid_traffic", "traffic applies to canary only")
        record = service.demote(name, version, body.stage, actor)
        return jsonify({"model": name, "version": version, "stage": record.stage, "traffic_percent": None}), 200
    job_id = store.new_job_id()
    pending = service.request_promotion(name, version, body.stage, body.traffic, actor, job_id=job_id)
    record = service.get_version(name, version)
    wait = get_settings().default_wait_seconds if body.wait is None else body.wait
    try:
        submitted = submit_and_wait(
            NewJob(owner=actor, kind="deploy", task="registry.promote", model=record.reference,
                   priority=priority_of("high"), total=1),
            task_names.REGISTRY_ACTIVATE_VERSION, _activation_queue(record.task),
            lambda job_id, reply_to: ActivationMessage(job_id=job_id, reply_to=reply_to, tenant=current_tenant(),
                                                       deployment_id=pending["id"]),
            wait, job_id=job_id)
    except Exception:
        # Not queued (the broker away: a 503 the client retries). Its pending deployment must not block
        # that retry; the stale-job sweep settles the rarer case where the failure came after the queuing.
        if _never_queued(job_id):
            service.fail_deployment(pending["id"], NOT_QUEUED, job_id)
        raise
    outcome = submitted.outcome
    if outcome is None:
        return jsonify({"job_id": submitted.job_id, "status": "deploying", "deployment": pending,
                        "status_url": url_for("jobs.show_job", job_id=submitted.job_id)}), 202
    if outcome["status"] != "succeeded":
        error = outcome.get("error") or {"code": "job_failed", "message": "the activation job failed"}
        raise ApiError(409 if error.get("code") != "job_failed" else 502, error["code"],
                       f"Not promoted; {error['message']}",
                       {"job_id": submitted.job_id, "deployment_id": pending["id"]})
    # The switch happened in a worker: this process need not wait for the generation check to see it.
    routing.serving_cache().clear()
    result = outcome["result"]
    switched = result["version"]
    return jsonify({"job_id": submitted.job_id, "model": name, "version": version, "stage": switched["stage"],
                    "traffic_percent": switched["traffic_percent"],
                    "previous_production": result["deployment"]["previous_version"],
                    "deployment": result["deployment"], "readiness": result["readiness"]}), 200


@bp.post("/models/<name>/rollback")
@require(DEPLOY)
@audited("model.rollback")
def rollback(name: str) -> Response:
    """Return production to the previous production version (or `to_version`), at once."""
    body = (parse_body(RollbackRequest, get_settings().max_json_depth) if request.get_data(cache=True)
            else RollbackRequest())
    _deployable(name)
    result = service.rollback(name, body.to_version, current_principal().key_id)
    return jsonify({"model": name, "version": result["version"]["version"], "stage": "production",
                    "rolled_back_from": result["rolled_back_from"], "deployment": result["deployment"]})
