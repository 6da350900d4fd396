"""Training data: inline rows or an object-store reference (JSON Lines, JSON, CSV or Parquet), and the
validation report every trainer produces before it trains (schema, types, ranges, required fields,
class balance). Problems are collected, not stopped at the first, so one answer lists them all."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.arrow_io import read_parquet
from cortex_tasks.core.storage.object_store import (
    InvalidObjectName,
    ObjectStore,
    ObjectStoreError,
    StoredObject,
    check_object_name,
    get_object_store,
    resolve_uri,
)
from cortex_tasks.core.tenancy import current_tenant
from cortex_tasks.core.training.config import training_config

MAX_REPORTED_PROBLEMS = 25
DATASET_SOURCES = ("rows", "object", "uri")
# What parse_rows reads; without `format`, a stored dataset's file extension names it.
DATASET_FORMATS = ("jsonl", "ndjson", "json", "csv", "parquet")
DATASET_CONTENT_TYPES = {"jsonl": "application/x-ndjson", "ndjson": "application/x-ndjson", "json": "application/json",
                         "csv": "text/csv", "parquet": "application/vnd.apache.parquet"}
DATASETS_FOLDER = "datasets"
MAX_DATASET_NAME_CHARS = 200


def tenant_datasets_prefix(tenant: str | None = None) -> str:
    """The folder of a tenant's uploaded datasets in Cortex's object store."""
    return f"{DATASETS_FOLDER}/{tenant or current_tenant()}/"


def dataset_location(dataset: dict[str, Any]) -> tuple[ObjectStore, str]:
    """The store and object name a dataset reference reads (an ObjectStoreError for a bad reference).

    `object` names a dataset the tenant uploaded (PUT /api/v1/training/datasets/{name}), inside its own
    folder. A `uri` may name any bucket the workers can read, the user's data lake say, but in Cortex's own
    store (its bucket or its artifact folder) only the tenant's dataset folder: other tenants' datasets,
    registry artifacts and batch results are nobody's training data."""
    if "object" in dataset:
        return get_object_store(), tenant_datasets_prefix() + check_object_name(dataset["object"])
    uri = str(dataset["uri"])
    store, name = resolve_uri(uri)
    own_store = uri.startswith("file://") or urlparse(uri).netloc == get_settings().s3_bucket
    if own_store and not name.startswith(tenant_datasets_prefix()):
        raise InvalidObjectName(uri, f"in Cortex's own store a dataset lies in {tenant_datasets_prefix()}; "
                                     "name an uploaded dataset with `object`")
    return store, name


def store_dataset(name: str, data: bytes) -> StoredObject:
    """Upload a dataset into the tenant's folder (replacing one of the same name); training jobs name it
    `{"object": name}`. Its format must be readable now, not when a job first reads it."""
    fmt = _format_of(check_object_name(name))
    if len(name) > MAX_DATASET_NAME_CHARS:
        raise InvalidObjectName(name, f"a dataset's name is at most {MAX_DATASET_NAME_CHARS} characters")
    if fmt is None:
        raise InvalidObjectName(name, f"a dataset's name ends in its format: .{', .'.join(DATASET_FORMATS)}")
    if not data:
        raise ObjectStoreError("empty_dataset", "The dataset is empty.")
    return get_object_store().put(tenant_datasets_prefix() + name, data, DATASET_CONTENT_TYPES[fmt])


def list_datasets() -> list[str]:
    prefix = tenant_datasets_prefix()
    return sorted(name.removeprefix(prefix) for name in get_object_store().list(prefix))


def delete_dataset(name: str) -> bool:
    return get_object_store().delete(tenant_datasets_prefix() + check_object_name(name))


def _format_of(name: str) -> str | None:
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return extension if extension in DATASET_FORMATS else None


def load_rows(dataset: dict[str, Any]) -> list[Any]:
    if "rows" in dataset:
        rows = dataset["rows"]
    else:
        reference = dataset.get("object") or dataset.get("uri")
        try:
            store, name = dataset_location(dataset)
            data = store.get(name)
        except ObjectStoreError as exc:
            raise JobInputError("dataset_unavailable", f"The dataset {reference!r} cannot be read: {exc.message}")
        rows = parse_rows(name, data, dataset.get("format"))
    if not isinstance(rows, list):
        raise JobInputError("invalid_dataset", "dataset.rows must be a list of rows")
    if len(rows) > training_config().max_rows:
        raise JobInputError("invalid_dataset", f"at most {training_config().max_rows} rows per training job")
    return rows


def parse_rows(name: str, data: bytes, fmt: str | None = None) -> list[Any]:
    fmt = fmt or name.rsplit(".", 1)[-1].lower()
    try:
        if fmt in ("jsonl", "ndjson"):
            return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
        if fmt == "json":
            return json.loads(data)
        if fmt == "csv":
            return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
        if fmt == "parquet":
            return read_parquet(data).to_pylist()
    except (ValueError, UnicodeDecodeError) as exc:
        raise JobInputError("invalid_dataset", f"The dataset {name!r} is not valid {fmt}: {exc}") from None
    raise JobInputError("invalid_dataset", f"Unknown dataset format {fmt!r}: use {', '.join(DATASET_FORMATS)}")


@dataclass
class ValidationReport:
    rows: int
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    error_count: int = 0

    def error(self, row: int | None, field_name: str | None, problem: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_PROBLEMS:
            self.errors.append({"row": row, "field": field_name, "problem": problem})

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "valid": not self.error_count, "error_count": self.error_count,
                "errors": self.errors, "warnings": self.warnings, **self.summary}

    def raise_if_invalid(self) -> None:
        if self.error_count:
            first = self.errors[0]
            where = f"row {first['row']}" if first["row"] is not None else "dataset"
            raise JobInputError("invalid_dataset",
                                f"The dataset has {self.error_count} problem(s); first: {where}: {first['problem']}",
                                {"validation": self.as_dict()})


def require_mapping_rows(rows: list[Any], report: ValidationReport, required: tuple[str, ...]) -> list[int]:
    """Indexes of rows that are objects with every required field (the others are reported)."""
    usable = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            report.error(index, None, f"a row must be an object, not {type(row).__name__}")
            continue
        missing = [name for name in required if name not in row or row[name] is None]
        if missing:
            report.error(index, missing[0], f"missing required field(s) {missing}")
            continue
        usable.append(index)
    return usable


def check_text(report: ValidationReport, index: int, value: Any, field_name: str = "text",
               max_chars: int = 10_000) -> bool:
    if not isinstance(value, str):
        report.error(index, field_name, f"must be a string, not {type(value).__name__}")
        return False
    if not value.strip():
        report.error(index, field_name, "is empty")
        return False
    if len(value) > max_chars:
        report.error(index, field_name, f"has {len(value)} characters; at most {max_chars}")
        return False
    return True


def check_balance(report: ValidationReport, counts: dict[str, int], min_per_class: int,
                  max_imbalance: float) -> None:
    """Class balance: every class needs `min_per_class` examples (so it can be both trained on and held
    out), and the largest class may be at most `max_imbalance` times the smallest."""
    report.summary["class_counts"] = dict(sorted(counts.items()))
    if len(counts) < 2:
        report.error(None, "label", f"a classifier needs at least 2 classes, found {len(counts)}")
        return
    for label, count in sorted(counts.items()):
        if count < min_per_class:
            report.error(None, "label", f"class {label!r} has {count} example(s); at least {min_per_class} "
                                        "are needed")
    smallest, largest = min(counts.values()), max(counts.values())
    ratio = largest / max(1, smallest)
    report.summary["imbalance_ratio"] = round(ratio, 2)
    if ratio > max_imbalance:
        report.error(None, "label", f"classes are imbalanced {ratio:.1f}:1 (largest to smallest); at most "
                                    f"{max_imbalance:g}:1 is accepted (params.max_imbalance)")
    elif ratio > 3:
        report.warnings.append(f"classes are imbalanced {ratio:.1f}:1; consider more examples of the rare ones")
