"""Taking a training request from the API: every rule checked before anything is written (the kind, the
model's name and task, the dataset's shape, the retraining schedule), then the job and its schedule.

A refusal is a CortexError carrying the status the API answers with."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.registry.service import check_model_name, registered_task
from cortex_tasks.core.storage.object_store import ObjectStoreError, check_object_name, resolve_uri
from cortex_tasks.core.training.config import training_config
from cortex_tasks.core.training.kinds import KINDS, TrainingKind, kind_names
from cortex_tasks.core.training.schedules import InvalidSchedule, parse_cron, save_schedule
from cortex_tasks.core.training.submission import QuotaExceeded, TrainingRequest, submit_training

DATASET_SOURCES = ("rows", "object", "uri")
# What datasets.parse_rows reads; without `format`, a stored dataset's file extension names it.
DATASET_FORMATS = ("jsonl", "ndjson", "json", "csv", "parquet")
# How long a client refused by a quota is asked to wait before trying again.
QUOTA_RETRY_AFTER_SECONDS = 30


@dataclass(frozen=True)
class RetrainingSchedule:
    cron: str | None
    metric: str | None
    threshold: float | None


def training_kind(name: str) -> TrainingKind:
    kind = KINDS.get(name)
    if kind is None:
        raise CortexError("unknown_kind", f"Unknown training kind {name!r}.", {"valid": kind_names()})
    return kind


def check_dataset(dataset: dict[str, Any]) -> None:
    """Inline rows, or one reference to data in the object store; the rows themselves are checked by the
    trainer, which reports every problem at once."""
    sources = [key for key in DATASET_SOURCES if key in dataset]
    if len(sources) != 1:
        raise CortexError("invalid_dataset", "dataset needs exactly one of 'rows' (inline), 'object' (a name "
                                             "in the object store) or 'uri' (s3://... or file://...).")
    if "rows" in dataset:
        if not isinstance(dataset["rows"], list) or not dataset["rows"]:
            raise CortexError("invalid_dataset", "dataset.rows must be a non-empty list of rows.")
        if len(dataset["rows"]) > training_config().max_rows:
            raise CortexError("invalid_dataset", f"at most {training_config().max_rows} rows inline.")
    elif not isinstance(dataset[sources[0]], str) or not dataset[sources[0]]:
        raise CortexError("invalid_dataset", f"dataset.{sources[0]} must be a non-empty string.")
    else:
        try:  # the reference's form only: whether the data is there is the trainer's to find
            check_object_name(dataset["object"]) if "object" in dataset else resolve_uri(dataset["uri"])
        except ObjectStoreError as exc:
            raise CortexError("invalid_dataset", f"dataset.{sources[0]}: {exc.message}") from None
    unknown = set(dataset) - {*DATASET_SOURCES, "format"}
    if unknown:
        raise CortexError("invalid_dataset", f"unknown dataset field(s) {sorted(unknown)}")
    if "format" in dataset and dataset["format"] not in DATASET_FORMATS:
        # Checked here rather than when the trainer reads the data: a typo is the caller's 4xx, not a failed job.
        raise CortexError("invalid_dataset", f"dataset.format is one of {', '.join(DATASET_FORMATS)}.")


def check_model_task(model: str, task: str) -> None:
    """A registered model keeps its task: its versions must all serve the same requests."""
    existing = registered_task(model)
    if existing is not None and existing != task:
        raise CortexError("task_mismatch", f"Model {model!r} is registered for task {existing!r}; this training "
                                           f"kind produces a {task!r} model. Choose another name.", status=409)


def check_schedule(schedule: RetrainingSchedule) -> None:
    if not schedule.cron and not schedule.metric:
        raise CortexError("invalid_schedule", "schedule needs a cron expression, a metric with a threshold, "
                                              "or both.")
    if schedule.metric and schedule.threshold is None:
        raise CortexError("invalid_schedule", "schedule.metric needs schedule.threshold.")
    try:
        if schedule.cron:
            parse_cron(schedule.cron)
    except InvalidSchedule as exc:
        raise CortexError("invalid_schedule", str(exc)) from None


def accept_training(request: TrainingRequest, schedule: RetrainingSchedule | None) -> tuple[str, TrainingKind]:
    """Check the request, queue the job (within the quotas) and keep its schedule; the job id and kind."""
    kind = training_kind(request.kind)
    check_model_name(request.model)  # a RegistryError: 422 invalid_model_name
    check_dataset(request.dataset)
    check_model_task(request.model, kind.task)
    if schedule is not None:
        check_schedule(schedule)
    try:
        job_id = submit_training(request)
    except QuotaExceeded as exc:
        raise CortexError(exc.code, exc.message, exc.details, status=429,
                          headers={"Retry-After": str(QUOTA_RETRY_AFTER_SECONDS)}) from None
    if schedule is not None:
        save_schedule(request.model, request.owner, kind.name, request.dataset, request.params, schedule.cron,
                      schedule.metric, schedule.threshold)
    return job_id, kind
