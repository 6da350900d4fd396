"""The prediction service behind /predict, /predict/batch, /predict/pipeline and /predict/stream.

It resolves the task and model (catalogue, registry routing, OpenAI availability), checks the inputs,
admits the work (load shedding, circuit breaker), answers from the cache what it holds and sends the rest
to the coalescer, then waits for the reply within the wait budget. It lives in the gateway because the
coalescer, the reply listener and the circuit breaker are the gateway process's own.

Tenants: `name@version` (or a bare name the registry deploys) resolves to the caller's tenant's registered
model, else to a bundled one. A registered model's catalogue entry is named by its tenant-qualified
reference (core/registry/references.py), and that name is what the coalescer groups by, what the message
carries and what the cache keys hold; answers and job records show the plain name.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from cortex_tasks.core import dependencies
from cortex_tasks.core.audio.intake import is_staged as is_staged_audio
from cortex_tasks.core.audio.intake import stage_inputs as stage_audio
from cortex_tasks.core.auth.permissions import NotAllowed, check_allowed, check_model_allowed
from cortex_tasks.core.cache.keys import params_fingerprint
from cortex_tasks.core.cache.service import MISSING, get_cache, keys_for
from cortex_tasks.core.cache.warming import QUERY_COUNTER
from cortex_tasks.core.catalogue import (
    MODELS,
    QUEUE_TASK_NAMES,
    ModelEntry,
    TaskEntry,
    UnknownName,
    find_model,
    model_entry,
    task_entry,
)
from cortex_tasks.core.images.intake import is_staged, stage_inputs
from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.jobs.store import NewJob, create_jobs
from cortex_tasks.core.openai.availability import refuse_unavailable_openai
from cortex_tasks.core.openai.billing import billed_params
from cortex_tasks.core.queues import priority_of
from cortex_tasks.core.registry.references import plain, plain_model_name
from cortex_tasks.core.registry.routing import routed_reference
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.tenancy import current_tenant
from cortex_tasks.core.validation.items import check_text, check_vector
from cortex_tasks.core.validation.media import check_prompt, image_params, transcription_params
from cortex_web.auth import current_principal
from cortex_web.coalescer import PendingJob, group_for
from cortex_web.dispatch import circuit_breaker, coalescer, reply_listener, shedder
from cortex_web.errors import ApiError
from cortex_web.metrics import JOB_OUTCOMES
from cortex_web.request_body import parse_body
from cortex_web.schemas import (
    NUMERIC_INPUT_KINDS,
    PipelineRequest,
    PredictRequest,
    check_numeric_inputs,
    implied_model,
)

# Codes a worker reports for problems with the input itself (a 422), as opposed to its own failures.
WORKER_FAILURE_CODES = {"model_error", "job_failed", "unavailable"}
# Refusals a worker reports for OpenAI models (cortex_tasks/runtime/openai/client.py).
STATUS_BY_CODE = {"rate_limited": 429, "budget_exceeded": 402, "openai_not_configured": 503}


@dataclass
class Prediction:
    job_id: str | None  # None when the cache answered every item (no job was needed)
    task: TaskEntry
    model: ModelEntry
    outcome: dict[str, Any] | None  # None: not finished within the wait budget
    submitted_at: float
    cached_items: int = 0


def resolve(task_name: str, model_ref: str | None) -> tuple[TaskEntry, ModelEntry]:
    if model_ref and "/" in model_ref:
        # Qualified references are internal (references.py): a request names models as its users know them.
        raise ApiError(404, "unknown_model", f"Unknown model {model_ref!r}.", {"valid": []})
    try:
        task = task_entry(task_name)
        if model_ref and "@" not in model_ref and model_ref not in MODELS:
            # A model deployed through the registry: this caller's sticky canary or production version.
            model_ref = routed_reference(model_ref, current_principal().key_id)
        name, _, version = (model_ref or "").partition("@")
        # name@version of a model trained by Cortex is served from the registry.
        registered = find_model(model_ref) if version and model_ref and name not in MODELS else None
        if registered is not None and registered.task == task.name:
            return task, _allowed(task, registered)
        model = model_entry(task, name or None)
    except UnknownName as exc:
        raise ApiError(404, f"unknown_{exc.kind}", f"Unknown {exc.kind} {exc.name!r}.",
                       {"valid": exc.valid}) from None
    if version and version != model.version:
        raise ApiError(404, "unknown_model_version", f"Model {model.name!r} has no version {version!r}.",
                       {"valid": [f"{model.name}@{model.version}"]})
    _allowed(task, model)
    refuse_unavailable_openai(model.name)  # OpenAI models: configured and within the monthly budget
    return task, model


def _allowed(task: TaskEntry, model: ModelEntry) -> ModelEntry:
    """The model that will really run (the task's default when the request named none), checked against
    the key's task and model lists."""
    check_allowed(current_principal(), task.name, plain_model_name(model.name))
    return model


def shown_model(model: ModelEntry) -> dict[str, str]:
    """The model as an answer names it: a registered model by its plain name, as the worker does."""
    return {"name": plain_model_name(model.name), "version": model.version}


def validate_inputs(task: TaskEntry, inputs: list[Any], params: dict[str, Any] | None = None,
                    model: ModelEntry | None = None) -> None:
    if task.input_kind in NUMERIC_INPUT_KINDS:  # time series: items and params checked together
        chosen = model or MODELS[task.default_model]
        check_numeric_inputs(task.name, chosen.name, chosen.loader, inputs, params)
        return
    for index, item in enumerate(inputs):
        if task.input_kind == "image":  # staged by stage_images before this (the gateway's own form only)
            if not is_staged(item):
                raise ApiError(422, "invalid_image", f"inputs[{index}] must be an image "
                               '({"image": "<base64>"} or {"image_ref": "<object name>"})', {"index": index})
            continue
        if task.input_kind == "audio":
            if not is_staged_audio(item):
                raise ApiError(422, "invalid_audio", f'inputs[{index}] must be a recording ({{"audio": "<base64>"}})',
                               {"index": index})
            continue
        # The shared item rules: an ItemError is a 422 invalid_input naming the item.
        if isinstance(item, str):
            check_text(item, f"inputs[{index}]", {"index": index})
        elif task.input_kind == "text_or_vector" and isinstance(item, list):
            check_vector(item, f"inputs[{index}]", {"index": index})
        else:
            expected = "a string or a list of numbers" if task.input_kind == "text_or_vector" else "a string"
            raise ApiError(422, "invalid_request", f"inputs[{index}] must be {expected}", {"index": index})


def stage_images(task: TaskEntry, inputs: list[Any]) -> list[Any]:
    """An image task's inputs checked (decodable, within the size and pixel limits) and stored under their
    hashes (core/images/intake.py), a transcription's recordings likewise (core/audio/intake.py); the first
    bad one is a 422 naming it. Other tasks' inputs as given."""
    if task.input_kind == "image":
        return stage_inputs(inputs, current_tenant())
    if task.input_kind == "audio":
        return stage_audio(inputs, current_tenant())
    return inputs


def check_media_params(task: TaskEntry, model: ModelEntry, inputs: list[Any], params: dict[str, Any]) -> None:
    """transcribe's and image_generate's params (and prompts), as their backends check them: a 422 now."""
    try:
        if task.name == "transcribe":
            transcription_params(params)
        elif task.name == "image_generate":
            image_params(model.name, params)
            for index, item in enumerate(inputs):
                check_prompt(item, f"inputs[{index}]", {"index": index})
    except JobInputError as exc:
        raise ApiError(422, exc.code, str(exc), exc.details) from None


def start_prediction(task: TaskEntry, model: ModelEntry, inputs: list[Any], params: dict[str, Any],
                     priority_class: str, inline_errors: bool = False,
                     looked_up: bool = False, sensitive: bool = False) -> tuple[str, PendingJob]:
    job_id = str(uuid.uuid4())
    priority = priority_of(priority_class)
    # The tenant is named here: the coalescer writes the record from its own thread, outside this request.
    tenant = current_tenant()
    pending = PendingJob(job_id, inputs, NewJob(owner=current_principal().key_id, kind="predict",
                                                task=task.name, model=plain(model.name), priority=priority,
                                                total=len(inputs), params=params or None, sensitive=sensitive,
                                                tenant=tenant),
                         inline_errors=inline_errors, looked_up=looked_up)
    reply_listener().expect(job_id)
    group = group_for(task.name, model.name, params, priority, task.queue, QUEUE_TASK_NAMES[task.queue],
                      tenant=tenant, sensitive=sensitive)
    coalescer().submit(group, pending)
    return job_id, pending


def admit(task: TaskEntry, model: ModelEntry, priority_class: str) -> tuple[ModelEntry, dict[str, str]]:
    """Load shedding and circuit breaking, before any work is queued: returns the model to use (the
    fallback while the chosen model's circuit is open) and a note for the response when it changed."""
    refusal = shedder().refusal(task.queue, priority_class)
    if refusal is not None:
        reason, retry_after = refusal
        raise ApiError(503, "overloaded", f"Low-priority work is being shed: {reason}. Retry later.",
                       {"queue": task.queue}, headers={"Retry-After": str(retry_after)})
    breaker = circuit_breaker()
    if not breaker.is_open(model.name):
        return model, {}
    fallback = MODELS.get(task.fallback_model or "")
    if fallback is not None and not _may_use(fallback.name):
        fallback = None  # a key limited to named models is not moved to another one
    if fallback is None or breaker.is_open(fallback.name):
        raise ApiError(503, "circuit_open", f"Model {plain(model.name)!r} is failing; its circuit is open.",
                       {"model": plain(model.name)}, headers={"Retry-After": str(breaker.retry_after(model.name))})
    return fallback, {"fallback_from": plain(model.name), "fallback_reason": "circuit open"}


def _may_use(model_name: str) -> bool:
    try:
        check_model_allowed(current_principal(), model_name)
    except NotAllowed:
        return False
    return True


def record_for_circuit(model: ModelEntry, outcome: dict[str, Any]) -> None:
    """Model failures (not bad input) count against the model's circuit; so does a worker-side fallback."""
    if outcome["status"] == "succeeded":
        failed = "fallback_from" in outcome["result"].get("model", {})
    else:
        failed = (outcome.get("error") or {}).get("code") in ("model_error", "job_failed")
    circuit_breaker().record(model.name, failed)


def run_prediction(task: TaskEntry, model: ModelEntry, inputs: list[Any], params: dict[str, Any],
                   priority_class: str, wait: float, inline_errors: bool = False,
                   sensitive: bool = False) -> Prediction:
    """Answer from the cache what it holds; send only the misses to a worker as one job.

    A sensitive job (its task's by nature, or the request's `sensitive`) skips the cache and the
    cache-warming query log: both keep what they hold in clear in Redis."""
    sensitive = sensitive or task.sensitive
    submitted_at = time.perf_counter()
    model, circuit_note = admit(task, model, priority_class)
    params = billed_params(model.name, params, current_principal().key_id)  # OpenAI calls are billed per key
    cache = get_cache()
    keys: list[str] = []
    outputs: list[Any] = [MISSING] * len(inputs)
    # A job that writes into a vector collection must reach the worker even if its vectors are known.
    if cache.enabled and task.cacheable and not sensitive and not params.get("collection"):
        # model.name is tenant-qualified for a registered model: its answers are its tenant's only
        # (bundled models' answers are shared: cache/service.py keys_for says why).
        keys = keys_for(task.name, model.name, model.version, params, inputs)
        outputs = cache.lookup(keys)
        QUERY_COUNTER.record(task.name, model.name, params_fingerprint(params), inputs)
    missing = [i for i, output in enumerate(outputs) if output is MISSING]
    if not missing:
        result = {"task": task.name, "model": shown_model(model), "outputs": outputs, "timings": {}}
        return Prediction(None, task, model, {"status": "succeeded", "result": result}, submitted_at,
                          cached_items=len(inputs))
    # A job needs both stores (the worker writes its row, the reply comes over Redis): while this process
    # knows one is away, answer 503 now rather than after the whole wait.
    dependencies.check(dependencies.DATABASE)
    dependencies.check(dependencies.REDIS)
    job_id, pending = start_prediction(task, model, [inputs[i] for i in missing], params, priority_class,
                                       inline_errors, looked_up=bool(keys), sensitive=sensitive)
    outcome = reply_listener().wait(job_id, wait)
    if outcome is None:
        return Prediction(job_id, task, model, left_for_polling(pending), submitted_at)
    JOB_OUTCOMES.labels(task.name, outcome["status"]).inc()
    record_for_circuit(model, outcome)
    if circuit_note and outcome["status"] == "succeeded":
        outcome["result"]["model"].update(circuit_note)
    if outcome["status"] == "succeeded" and keys:
        result = outcome["result"]
        fresh = result["outputs"]
        if "fallback_from" not in result["model"]:  # a fallback's answer must not pass for the model's
            answered = [(keys[i], out) for i, out in zip(missing, fresh)
                        if not (isinstance(out, dict) and set(out) == {"index", "error"})]
            cache.remember([key for key, _ in answered], [out for _, out in answered])
        for i, out in zip(missing, fresh):
            if isinstance(out, dict) and set(out) == {"index", "error"}:
                out = {**out, "index": i}
            outputs[i] = out
        outcome = {**outcome, "result": {**result, "outputs": outputs}}
    return Prediction(job_id, task, model, outcome, submitted_at, cached_items=len(inputs) - len(missing))


def left_for_polling(pending: PendingJob) -> dict[str, Any] | None:
    """A job not answered within its request's wait: its row is written (the worker may not have created it
    yet) before anyone is sent to poll it, once its message has left. None then; the failure instead when
    the message could not be queued after all (gathered, then refused by the broker on the coalescer's
    thread): a row would stay queued for ever with no message behind it."""
    if not _sent_unless_database_away(pending):
        raise dependencies.DependencyUnavailable(dependencies.DATABASE)
    if pending.send_failure is not None:
        return pending.send_failure
    create_jobs([(pending.job_id, pending.record)])
    return None


def _sent_unless_database_away(pending: PendingJob, seconds: float = 10.0) -> bool:
    """Wait (up to `seconds`) until the coalescer has sent the job. While the database is away the workers
    cannot answer, the coalescer's messages in flight stay unanswered and new jobs wait behind them: such a
    job is withdrawn (False) and its request answered 503 at once, rather than after the whole wait.
    Otherwise a job still held back by its group's in-flight budget is sent at once (Coalescer.hurry)."""
    deadline = time.monotonic() + seconds
    gate = dependencies.gate_for(dependencies.DATABASE)
    if gate is None or not gate.failed:
        coalescer().hurry(pending)
    while not pending.sent.wait(0.1):
        gate = dependencies.gate_for(dependencies.DATABASE)
        if gate is not None and gate.failed and coalescer().withdraw(pending):
            return False
        if time.monotonic() > deadline:
            break
    return True


def raise_for_failure(prediction: Prediction) -> None:
    outcome = prediction.outcome
    if outcome is None or outcome["status"] == "succeeded":
        return
    error = outcome.get("error") or {"code": "job_failed", "message": "the job failed"}
    code = error.get("code", "job_failed")
    status = (503 if code == "unavailable" else 502 if code in WORKER_FAILURE_CODES
              else STATUS_BY_CODE.get(code, 422))
    details = {"job_id": prediction.job_id, **error.get("details", {})}
    if code == "unavailable" and "dependency" in details:  # a store was away when the job was to be queued
        raise dependencies.DependencyUnavailable(details["dependency"])
    raise ApiError(status, code, error.get("message", "the job failed"), details)


def success_body(prediction: Prediction) -> dict[str, Any]:
    assert prediction.outcome is not None
    result = prediction.outcome["result"]
    timings = {**result.get("timings", {}),
               "total_ms": round((time.perf_counter() - prediction.submitted_at) * 1000, 2)}
    body = {"job_id": prediction.job_id, "task": result["task"], "model": result["model"],
            "outputs": result["outputs"], "cached": prediction.cached_items == len(result["outputs"]),
            "timings": timings}
    if 0 < prediction.cached_items < len(result["outputs"]):
        body["cached_items"] = prediction.cached_items
    return body


def parse_prediction() -> tuple[PredictRequest, TaskEntry, ModelEntry, float]:
    settings = get_settings()
    body = parse_body(PredictRequest, settings.max_json_depth)
    # A time-series request without a model runs the one its params.method (or its inputs) call for.
    task, model = resolve(body.task, body.model or implied_model(body.task, body.params, body.inputs))
    check_media_params(task, model, body.inputs, body.params)
    body.inputs = stage_images(task, body.inputs)
    validate_inputs(task, body.inputs, body.params, model)
    wait = settings.default_wait_seconds if body.wait is None else body.wait
    return body, task, model, wait


def next_inputs(previous_inputs: list[Any], outputs: list[Any]) -> list[Any]:
    """What a pipeline step hands to the next one: text it produced (e.g. pii_mask's masked text),
    otherwise the same inputs it was given (e.g. language -> ner)."""
    produced = []
    for original, output in zip(previous_inputs, outputs):
        if isinstance(output, str):
            produced.append(output)
        elif isinstance(output, dict) and isinstance(output.get("text"), str) and "entities" in output:
            produced.append(output["text"])
        else:
            produced.append(original)
    return produced


def run_pipeline(body: PipelineRequest, wait: float) -> list[dict[str, Any]]:
    """Steps run in order, each on the previous step's output where that makes sense; every step's answer,
    in order. A step that fails or does not finish in time stops the pipeline with an error naming it."""
    steps = [(resolve(step.task, step.model), step.params) for step in body.steps]
    # A step after a sensitive one works on what it produced from personal data: the whole pipeline is.
    sensitive = body.sensitive or any(task.sensitive for (task, _), _ in steps)
    inputs = list(body.inputs)
    for (task, _), _ in steps[:1]:
        inputs = stage_images(task, inputs)
        validate_inputs(task, inputs)
    deadline = time.monotonic() + wait
    results = []
    for index, ((task, model), params) in enumerate(steps):
        prediction = run_prediction(task, model, inputs, params, body.priority,
                                    max(0.5, deadline - time.monotonic()), sensitive=sensitive)
        if prediction.outcome is None:
            raise ApiError(504, "pipeline_timeout", f"Step {index} ({task.name}) did not finish in time.",
                           {"job_id": prediction.job_id, "step": index})
        try:
            raise_for_failure(prediction)
        except ApiError as exc:
            exc.details["step"] = index
            raise
        step_result = success_body(prediction)
        results.append({"step": index, "inputs": inputs, **step_result})
        inputs = next_inputs(inputs, step_result["outputs"])
    return results
