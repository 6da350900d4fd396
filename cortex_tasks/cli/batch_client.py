"""A batch client for people (used by `cortex batch submit`): read a file of inputs, submit it to the
gateway in batches of at most 1000, follow their progress, and write every result to one file.

Only the standard library speaks HTTP here, so the CLI needs nothing beyond Cortex itself. Each part is
submitted with an Idempotency-Key derived from the file's content and the request, so running the same
command again after an interruption picks up the same jobs instead of starting new ones.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

INPUT_FORMATS = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
OUTPUT_FORMATS = (".jsonl", ".parquet", ".csv", ".arrow")


class BatchClientError(Exception):
    pass


@dataclass(frozen=True)
class InputFile:
    inputs: list[Any]
    ids: list[Any] | None  # the file's own `id` column or field, carried into every result format


ID_COLUMN = "id"


def check_output_path(out: Path) -> None:
    """Refuse an output format before anything is submitted (not after the batch ran)."""
    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise BatchClientError(f"--out must end in one of {', '.join(OUTPUT_FORMATS)} (got {out.name!r})")


def read_inputs(path: Path, column: str | None = None) -> InputFile:
    """Inputs from JSON Lines (a string, or an object whose `column`/"text"/"input" field is the input,
    or any other JSON value for structured tasks), a JSON array, CSV (a column) or Parquet (a column).
    An `id` column (or an `id` field in every object) is kept to label the results."""
    suffix = path.suffix.lower()
    if suffix not in INPUT_FORMATS:
        raise BatchClientError(f"{path.name}: use one of {', '.join(INPUT_FORMATS)}")
    if suffix in (".jsonl", ".ndjson", ".json"):
        text = path.read_text(encoding="utf-8")
        try:
            values = json.loads(text) if suffix == ".json" else [
                json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise BatchClientError(f"{path.name} is not valid JSON: {exc}") from None
        if not isinstance(values, list):
            raise BatchClientError(f"{path.name} must hold a JSON array")
        has_ids = bool(values) and column != ID_COLUMN and all(
            isinstance(value, dict) and ID_COLUMN in value for value in values)
        return InputFile([_pick(value, column) for value in values],
                         [value[ID_COLUMN] for value in values] if has_ids else None)
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            names = reader.fieldnames or []
            name = _column(names, column, path)
            rows = list(reader)
        has_ids = ID_COLUMN in names and name != ID_COLUMN
        return InputFile([row[name] for row in rows], [row[ID_COLUMN] for row in rows] if has_ids else None)
    table = pq.read_table(path)
    name = _column(table.column_names, column, path)
    has_ids = ID_COLUMN in table.column_names and name != ID_COLUMN
    return InputFile(table.column(name).to_pylist(),
                     table.column(ID_COLUMN).to_pylist() if has_ids else None)


def _pick(value: Any, column: str | None) -> Any:
    if isinstance(value, dict):
        for name in (column, "text", "input"):
            if name and name in value:
                return value[name]
    return value


def _column(names: list[str], column: str | None, path: Path) -> str:
    if column:
        if column not in names:
            raise BatchClientError(f"{path.name} has no column {column!r} (columns: {', '.join(names)})")
        return column
    for name in ("text", "input"):
        if name in names:
            return name
    candidates = [name for name in names if name != ID_COLUMN]
    if len(candidates) == 1:
        return candidates[0]
    raise BatchClientError(f"{path.name} has several columns; say which one holds the inputs with --column")


@dataclass
class Gateway:
    url: str
    key: str
    timeout: float = 120.0
    # A 429 (rate limited) or 503 (overloaded) with Retry-After is waited out and retried: every call
    # here is safe to repeat (reads, and submits carry an Idempotency-Key).
    max_retries: int = 20
    max_retry_wait: float = 60.0

    def __post_init__(self) -> None:
        # urllib also opens file:// and ftp:// URLs; a gateway is only ever reached over HTTP(S).
        if urllib.parse.urlsplit(self.url).scheme not in ("http", "https"):
            raise BatchClientError(f"the gateway URL must start with http:// or https://, not {self.url!r}")

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(self.url.rstrip("/") + path, data=data, method=method, headers={
                "Authorization": f"Bearer {self.key}", **({"Content-Type": "application/json"} if data else {}),
                **(headers or {})})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:  # nosec B310 - scheme checked
                    return response.status, response.read()
            except urllib.error.HTTPError as exc:
                wait = _retry_after(exc)
                if wait is None or attempt == self.max_retries:
                    self._fail(method, path, exc)
                exc.close()
                time.sleep(min(wait, self.max_retry_wait))
            except urllib.error.URLError as exc:
                raise BatchClientError(f"cannot reach the gateway at {self.url}: {exc.reason}") from None
        raise AssertionError("unreachable")

    @staticmethod
    def _fail(method: str, path: str, exc: urllib.error.HTTPError) -> NoReturn:
        payload = exc.read()
        try:
            error = json.loads(payload)["error"]
            message = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            message = payload[:300].decode(errors="replace")
        raise BatchClientError(f"{method} {path} answered {exc.code}: {message}") from None

    def json(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        return json.loads(self.call(method, path, body, headers)[1])


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    """Seconds to wait before retrying, for a 429 or 503 that says (Retry-After in seconds)."""
    if exc.code not in (429, 503):
        return None
    try:
        return max(0.0, float(exc.headers.get("Retry-After", "")))
    except ValueError:
        return None


@dataclass
class Part:
    offset: int
    inputs: list[Any]
    job_id: str = ""
    done: int = 0
    failed: int = 0
    status: str = "queued"
    extra: dict[str, Any] = field(default_factory=dict)


def idempotency_key(inputs: list[Any], task: str, model: str | None, params: dict[str, Any], part: int) -> str:
    digest = hashlib.sha256(json.dumps([inputs, task, model, params], sort_keys=True).encode()).hexdigest()
    return f"cli-{digest[:40]}-{part}"


def submit_all(gateway: Gateway, inputs: list[Any], task: str, model: str | None, params: dict[str, Any],
               priority: str, part_size: int = 1000) -> list[Part]:
    parts = [Part(offset, inputs[offset:offset + part_size]) for offset in range(0, len(inputs), part_size)]
    for number, part in enumerate(parts):
        body: dict[str, Any] = {"task": task, "inputs": part.inputs, "params": params, "priority": priority}
        if model:
            body["model"] = model
        answer = gateway.json("POST", "/api/v1/batch/submit", body, {
            "Idempotency-Key": idempotency_key(inputs, task, model, params, number)})
        part.job_id = answer["job_id"]
    return parts


def wait_all(gateway: Gateway, parts: list[Part], on_progress: Callable[[int], None], poll: float = 0.5) -> None:
    while True:
        for part in parts:
            if part.status in ("succeeded", "failed", "cancelled"):
                continue
            progress = gateway.json("GET", f"/api/v1/batch/progress/{part.job_id}")
            part.done, part.failed, part.status = progress["done"], progress["failed"], progress["status"]
        on_progress(sum(part.done + part.failed for part in parts))
        if all(part.status in ("succeeded", "failed", "cancelled") for part in parts):
            return
        time.sleep(poll)


def collect(gateway: Gateway, parts: list[Part]) -> pa.Table:
    """Every part's Parquet result, in input order, with `index` counted over the whole file."""
    tables = []
    for part in parts:
        _, data = gateway.call("GET", f"/api/v1/batch/results/{part.job_id}?format=parquet")
        table = pq.read_table(io.BytesIO(data))
        index = pc.add(table.column("index").cast(pa.int64()), part.offset)
        tables.append(table.set_column(table.schema.get_field_index("index"), "index", index))
    encodings = {(t.schema.metadata or {}).get(b"cortex.output_encoding") for t in tables}
    merged = pa.concat_tables([t.replace_schema_metadata(None) for t in tables], promote_options="permissive")
    return merged.replace_schema_metadata({b"cortex.output_encoding": (encodings.pop() if len(encodings) == 1
                                                                      else b"json") or b"arrow"})


def result_table(table: pa.Table, source: InputFile) -> pa.Table:
    """The columns every output format carries, in this order: the input file's `id` (when it has one),
    `index` (position in the file), `input`, `status` (succeeded|failed), `output` (the model's, typed as
    the gateway sent it), `error` (JSON text: {"code", "message"})."""
    indices = table.column("index").to_pylist()
    errors = table.column("error")
    status = pc.if_else(pc.is_null(errors), "succeeded", "failed")
    columns: dict[str, pa.Array | pa.ChunkedArray] = {}
    if source.ids is not None:
        columns[ID_COLUMN] = _arrow_values([source.ids[i] for i in indices])
    columns.update({"index": table.column("index"), "input": _arrow_values([source.inputs[i] for i in indices]),
                    "status": status, "output": table.column("output"), "error": errors})
    return pa.table(columns).replace_schema_metadata(table.schema.metadata)


def _arrow_values(values: list[Any]) -> pa.Array:
    """Values as one Arrow column: their own type when they share one, else JSON text (structured inputs
    of mixed shapes)."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([json.dumps(value, ensure_ascii=False) for value in values], pa.string())


def write_results(table: pa.Table, source: InputFile, out: Path) -> None:
    check_output_path(out)
    results = result_table(table, source)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix == ".parquet":
        pq.write_table(results, out, compression="zstd")
        return
    if suffix == ".arrow":
        # The Arrow IPC *file* format (random access, what pa.ipc.open_file and pandas.read_feather read).
        with pa.OSFile(str(out), "wb") as sink, pa.ipc.new_file(sink, results.schema) as writer:
            writer.write_table(results)
        return
    as_json = (results.schema.metadata or {}).get(b"cortex.output_encoding") == b"json"
    names = results.column_names
    with open(out, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle) if suffix == ".csv" else None
        if writer is not None:
            writer.writerow(names)
        for row in results.to_pylist():
            if as_json and row["output"] is not None:
                row["output"] = json.loads(row["output"])
            row["error"] = json.loads(row["error"]) if row["error"] else None
            if writer is None:
                if row["status"] == "succeeded":
                    del row["error"]
                else:
                    del row["output"]
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                writer.writerow([_csv_cell(row[name], name) for name in names])


def _csv_cell(value: Any, column: str) -> str:
    if value is None:
        return ""
    if column in ("output", "error") or not isinstance(value, str | int | float):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
