"""Batch results in object storage (torch-free: the gateway reads pages from here).

Each finished chunk writes one Arrow IPC object (`batches/<job>/chunks/<n>.arrow`) with a row per input:
its position in the batch, the output (null if the item failed) and the error (null if it succeeded).
When the last chunk finishes, the chunks are merged into one Parquet file (`batches/<job>/results.parquet`),
the reference the job row keeps and what `?format=parquet` serves.

Outputs keep their natural Arrow type when every chunk agrees on one (an embedding is `list<double>`, a
classification a struct); outputs that Arrow cannot type (mixed shapes) are stored as JSON text, and the
schema metadata says so, so a reader always gets back exactly what /predict would have answered.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cortex_tasks.core.storage import arrow_io
from cortex_tasks.core.storage.object_store import ObjectNotFound, get_object_store
from cortex_tasks.core.storage.sealing import protect_bytes, reveal_bytes

ENCODING_KEY = b"cortex.output_encoding"
JSON_ENCODING, ARROW_ENCODING = b"json", b"arrow"


def chunk_object_name(job_id: str, chunk_index: int) -> str:
    return f"batches/{job_id}/chunks/{chunk_index:05d}.arrow"


def merged_object_name(job_id: str) -> str:
    return f"batches/{job_id}/results.parquet"


def batch_prefix(job_id: str) -> str:
    return f"batches/{job_id}/"


def _json_text(values: Sequence[Any]) -> pa.Array:
    return pa.array([None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
                     for value in values], type=pa.string())


def output_array(outputs: Sequence[Any]) -> tuple[pa.Array, bytes]:
    """Outputs as an Arrow array of their own type where Arrow can infer one, else as JSON text."""
    try:
        array = pa.array(list(outputs))
        if not pa.types.is_null(array.type) or all(value is None for value in outputs):
            return array, ARROW_ENCODING
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        pass
    return _json_text(outputs), JSON_ENCODING


def chunk_table(start_index: int, outputs: Sequence[Any], errors: dict[int, dict[str, Any]]) -> pa.Table:
    """`outputs[i]` is the output of input `start_index + i` (ignored where `errors` has that index)."""
    values = [None if start_index + i in errors else output for i, output in enumerate(outputs)]
    array, encoding = output_array(values)
    error_text = [json.dumps(errors[start_index + i], separators=(",", ":")) if start_index + i in errors
                  else None for i in range(len(outputs))]
    table = pa.table({
        "index": pa.array(range(start_index, start_index + len(outputs)), type=pa.int32()),
        "output": array,
        "error": pa.array(error_text, type=pa.string()),
    })
    return table.replace_schema_metadata({ENCODING_KEY: encoding})


def write_chunk(job_id: str, chunk_index: int, table: pa.Table, sensitive: bool = False) -> str:
    """A sensitive batch's objects are sealed under the data key (core/storage/sealing.py), bound to
    their names; readers open them by their magic bytes."""
    name = chunk_object_name(job_id, chunk_index)
    data = arrow_io.write_ipc_stream(table)
    get_object_store().put(name, protect_bytes(data, name) if sensitive else data,
                           "application/vnd.apache.arrow.stream")
    return name


def read_chunk(name: str) -> pa.Table:
    return arrow_io.read_ipc_stream(reveal_bytes(get_object_store().get(name), name))


def _encoding(table: pa.Table) -> bytes:
    return (table.schema.metadata or {}).get(ENCODING_KEY, ARROW_ENCODING)


def _as_json_column(table: pa.Table) -> pa.Table:
    if _encoding(table) == JSON_ENCODING:
        return table
    column = _json_text(table.column("output").to_pylist())
    table = table.set_column(table.schema.get_field_index("output"), "output", column)
    return table.replace_schema_metadata({ENCODING_KEY: JSON_ENCODING})


def merge_tables(tables: list[pa.Table]) -> pa.Table:
    """One table in input order; falls back to JSON text when the chunks' output types do not unify."""
    if not tables:
        raise ValueError("nothing to merge")
    if all(_encoding(table) == ARROW_ENCODING for table in tables):
        try:
            merged = pa.concat_tables([t.replace_schema_metadata(None) for t in tables],
                                      promote_options="permissive")
            return merged.replace_schema_metadata({ENCODING_KEY: ARROW_ENCODING})
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            pass
    converted = [_as_json_column(table).replace_schema_metadata(None) for table in tables]
    return pa.concat_tables(converted).replace_schema_metadata({ENCODING_KEY: JSON_ENCODING})


def write_merged(job_id: str, chunk_names: list[str], row_group_rows: int,
                 sensitive: bool = False) -> tuple[str, int]:
    """Merge the chunk objects into the job's Parquet file; returns (object name, size in bytes)."""
    table = merge_tables([read_chunk(name) for name in chunk_names])
    # Row groups the size of a chunk: a reader after one page reads one or two groups, not the file.
    # No dictionary encoding: model outputs (vectors, scores) are nearly all distinct, and trying a
    # dictionary first costs ten times the rest of the write (and makes the file larger).
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", use_dictionary=False, row_group_size=max(1, row_group_rows))
    data = sink.getvalue().to_pybytes()
    name = merged_object_name(job_id)
    get_object_store().put(name, protect_bytes(data, name) if sensitive else data, "application/vnd.apache.parquet")
    return name, len(data)


@dataclass(frozen=True)
class ChunkRef:
    chunk_index: int
    start_index: int
    stop_index: int
    result_ref: str | None  # None while the chunk is unfinished


def _rows(table: pa.Table) -> Iterator[dict[str, Any]]:
    as_json = _encoding(table) == JSON_ENCODING
    for index, output, error in zip(table.column("index").to_pylist(), table.column("output").to_pylist(),
                                    table.column("error").to_pylist()):
        if error is not None:
            yield {"index": index, "status": "failed", "error": json.loads(error)}
        else:
            yield {"index": index, "status": "succeeded",
                   "output": json.loads(output) if as_json and output is not None else output}


def page_items(chunks: Sequence[ChunkRef], first: int, last: int) -> list[dict[str, Any]]:
    """Items first..last-1 in input order, read from the chunk objects that hold them; items of chunks
    still running are reported as pending."""
    items: list[dict[str, Any]] = []
    for chunk in chunks:
        if chunk.stop_index <= first or chunk.start_index >= last:
            continue
        low, high = max(first, chunk.start_index), min(last, chunk.stop_index)
        if chunk.result_ref is None:
            items.extend({"index": i, "status": "pending"} for i in range(low, high))
            continue
        table = read_chunk(chunk.result_ref).slice(low - chunk.start_index, high - low)
        items.extend(_rows(table))
    return items


def read_merged(name: str) -> bytes:
    return reveal_bytes(get_object_store().get(name), name)


def arrow_stream_from_parquet(parquet_bytes: bytes) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The merged results as record batches, one per row group, to stream as Arrow IPC."""
    parquet = pq.ParquetFile(pa.BufferReader(parquet_bytes))
    schema = parquet.schema_arrow
    return schema, (batch for batch in parquet.iter_batches())


def delete_results(job_id: str) -> int:
    store = get_object_store()
    deleted = 0
    for name in store.list(batch_prefix(job_id)):
        try:
            deleted += store.delete(name)
        except ObjectNotFound:
            pass
    return deleted
