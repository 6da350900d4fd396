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


def read_inputs(path: Path, column: str | None = None) -> list[Any]:
    """Inputs from JSON Lines (a string, or an object whose `column`/"text"/"input" field is the input,
    or any other JSON value for structured tasks), a JSON array, CSV (a column) or Parquet (a column)."""
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
        return [_pick(value, column) for value in values]
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            name = _column(reader.fieldnames or [], column, path)
            return [row[name] for row in reader]
    table = pq.read_table(path)
    return table.column(_column(table.column_names, column, path)).to_pylist()


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
    if len(names) == 1:
        return names[0]
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


def write_results(table: pa.Table, inputs: list[Any], out: Path) -> None:
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise BatchClientError(f"--out must end in one of {', '.join(OUTPUT_FORMATS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        pq.write_table(table, out, compression="zstd")
        return
    if suffix == ".arrow":
        with pa.OSFile(str(out), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return
    as_json = (table.schema.metadata or {}).get(b"cortex.output_encoding") == b"json"
    rows = []
    for index, output, error in zip(table.column("index").to_pylist(), table.column("output").to_pylist(),
                                    table.column("error").to_pylist()):
        if as_json and output is not None:
            output = json.loads(output)
        row: dict[str, Any] = {"index": index, "input": inputs[index]}
        row.update({"status": "failed", "error": json.loads(error)} if error else {"status": "succeeded", "output": output})
        rows.append(row)
    with open(out, "w", encoding="utf-8", newline="") as handle:
        if suffix == ".jsonl":
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            writer = csv.writer(handle)
            writer.writerow(["index", "input", "status", "output", "error"])
            for row in rows:
                writer.writerow([row["index"], row["input"] if isinstance(row["input"], str) else json.dumps(row["input"]),
                                 row["status"], json.dumps(row.get("output")) if "output" in row else "",
                                 json.dumps(row.get("error")) if "error" in row else ""])
