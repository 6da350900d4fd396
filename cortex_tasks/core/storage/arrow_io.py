"""Apache Arrow for batch results and dataset transfers: Parquet files and Arrow IPC streams, compressed
with lz4 (the default) or zstd, in record batches of 10,000 rows.

Vectors are kept as `fixed_size_list<float32>[dim]` columns, converted to and from numpy without copying
where Arrow allows it (a C-contiguous float32 matrix is one buffer either way).
"""
from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Self

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import ipc

COMPRESSIONS = ("lz4", "zstd", "none")
DEFAULT_COMPRESSION = "lz4"
DEFAULT_BATCH_ROWS = 10_000

Rows = Sequence[Mapping[str, Any]]
TableLike = pa.Table | pa.RecordBatch | Rows


def _check_compression(compression: str) -> str | None:
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, not {compression!r}")
    return None if compression == "none" else compression


def as_table(data: TableLike, schema: pa.Schema | None = None) -> pa.Table:
    """A table from a table, a record batch, or a list of row dicts (columns in first-seen key order)."""
    if isinstance(data, pa.Table):
        return data if schema is None else data.cast(schema)
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data], schema=schema)
    return pa.Table.from_pylist(list(data), schema=schema)


def write_parquet(data: TableLike, compression: str = "zstd", schema: pa.Schema | None = None,
                  row_group_rows: int = DEFAULT_BATCH_ROWS) -> bytes:
    """Parquet bytes (zstd by default: the better ratio for files kept in object storage)."""
    sink = pa.BufferOutputStream()
    pq.write_table(as_table(data, schema), sink, compression=_check_compression(compression) or "none",
                   row_group_size=row_group_rows)
    return sink.getvalue().to_pybytes()


def read_parquet(source: bytes | bytearray | memoryview | str | Path | BinaryIO,
                 columns: list[str] | None = None) -> pa.Table:
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = pa.BufferReader(source)
    return pq.read_table(source, columns=columns)


def write_ipc_stream(data: TableLike, compression: str = DEFAULT_COMPRESSION,
                     schema: pa.Schema | None = None, batch_rows: int = DEFAULT_BATCH_ROWS) -> bytes:
    """One Arrow IPC stream (lz4 by default: fast to write and read, for transfers)."""
    table = as_table(data, schema)
    sink = pa.BufferOutputStream()
    with IpcStreamWriter(sink, table.schema, compression) as writer:
        for batch in table.to_batches(max_chunksize=batch_rows):
            writer.write(batch)
    return sink.getvalue().to_pybytes()


def read_ipc_stream(source: bytes | bytearray | memoryview | BinaryIO) -> pa.Table:
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = pa.BufferReader(source)
    with ipc.open_stream(source) as reader:
        return reader.read_all()


def iter_ipc_batches(source: bytes | BinaryIO) -> Iterator[pa.RecordBatch]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = pa.BufferReader(source)
    with ipc.open_stream(source) as reader:
        yield from reader


class IpcStreamWriter:
    """Writes record batches to an Arrow IPC stream as they are produced (e.g. batch results chunk by
    chunk, or an HTTP response body): `with IpcStreamWriter(sink, schema) as w: w.write(rows_or_batch)`."""

    def __init__(self, sink: Any, schema: pa.Schema, compression: str = DEFAULT_COMPRESSION) -> None:
        options = ipc.IpcWriteOptions(compression=_check_compression(compression))
        self.schema = schema
        self._writer = ipc.new_stream(sink, schema, options=options)

    def write(self, data: TableLike) -> None:
        if isinstance(data, pa.RecordBatch):
            self._writer.write_batch(data)
        else:
            self._writer.write_table(as_table(data, self.schema))

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ipc_stream_chunks(schema: pa.Schema, batches: Iterable[TableLike],
                      compression: str = DEFAULT_COMPRESSION) -> Iterator[bytes]:
    """An Arrow IPC stream as a generator of byte chunks (one per batch): a streaming HTTP body."""
    sink = io.BytesIO()
    writer = IpcStreamWriter(sink, schema, compression)

    def drain() -> bytes:
        chunk = sink.getvalue()
        sink.seek(0)
        sink.truncate()
        return chunk

    yield drain()  # the schema message
    for batch in batches:
        writer.write(batch)
        yield drain()
    writer.close()
    yield drain()  # the end-of-stream marker


# --- vectors ---


def vector_type(dimension: int) -> pa.DataType:
    return pa.list_(pa.float32(), dimension)


def vectors_to_arrow(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """A (n, dim) float32 matrix as a fixed-size-list array over the same memory (no copy when the
    matrix is C-contiguous float32)."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError("expected a 2-dimensional matrix")
    values = pa.array(matrix.reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(values, matrix.shape[1])


def arrow_to_vectors(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A fixed-size-list<float32> column back to a (n, dim) matrix; zero-copy for a single chunk
    without nulls."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not pa.types.is_fixed_size_list(column.type):
        raise ValueError(f"expected a fixed_size_list column, not {column.type}")
    if column.null_count:
        raise ValueError("vector column has nulls")
    dimension = column.type.list_size
    flat = column.flatten()  # honours the array's offset
    values = flat.to_numpy(zero_copy_only=flat.type == pa.float32())
    return values.astype(np.float32, copy=False).reshape(len(column), dimension)


def vector_table(ids: Sequence[str], matrix: np.ndarray,
                 metadata: Sequence[Mapping[str, Any] | None] | None = None) -> pa.Table:
    """ids + vectors (+ metadata as JSON text) as one table, e.g. for moving a collection's contents."""
    import json

    columns: dict[str, Any] = {"id": pa.array(list(ids), type=pa.string()), "vector": vectors_to_arrow(matrix)}
    if metadata is not None:
        columns["metadata"] = pa.array([json.dumps(item or {}, separators=(",", ":")) for item in metadata],
                                       type=pa.string())
    return pa.table(columns)
