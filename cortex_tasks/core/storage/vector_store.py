"""Named vector collections on PostgreSQL + pgvector: upsert by id, JSONB metadata with equality filters,
nearest-neighbour search through an HNSW or IVFFlat index, delete, count.

One table per collection (`vectors_<id>`), with `vector_collections` as the catalogue that names them.
Why not one shared table: pgvector can index only a column of a fixed dimension (`vector(384)`). A shared
table would need one partial expression index per collection (`((embedding::vector(384))) WHERE
collection_id = 7`), which the planner uses only when a query repeats that exact cast and predicate, with
table-wide statistics that fit no collection in particular. A table per collection gets a plain typed
column, its own index with its own operator class (the metric) and build parameters, its own planner
statistics, and dropping a collection is a DROP TABLE rather than a mass DELETE and a long vacuum.

Safety: table and index names never come from user input; they are built from the catalogue's integer
key with `psycopg.sql.Identifier`. Distance operators and operator classes come from the `METRICS`
allow-list; index build parameters are validated integers. Every value (vectors, ids, filters, k) is a
bound parameter. Vectors are checked (dimension, finite float32) before anything is written.

Tenants: every collection belongs to one (`vector_collections.tenant`), and a name is unique within its
tenant only: two tenants may each have `products`. This module's SQL is raw, so the ORM's tenant filter
(storage/db.py) does not reach it: every statement on the catalogue names the tenant in scope itself
(`_tenant()`, which raises when none is: fail closed), and the items' tables are only ever reached
through a catalogue row found that way. Another tenant's collection is therefore exactly a missing one
(404 `collection_not_found`), which tells a caller nothing about names other tenants use.

Vectors travel in binary: the bulk path streams a binary COPY of pgvector's wire format, query vectors
are bound in binary (`%b`), and vectors read back arrive through pgvector's binary loader as numpy arrays.
"""
from __future__ import annotations

import json
import math
import re
import struct
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

import numpy as np
import psycopg
import sqlalchemy.exc
from pgvector import Vector
from pgvector.psycopg.vector import register_vector_info
from psycopg import sql
from psycopg.types import TypeInfo
from psycopg.types.json import Jsonb
from sqlalchemy import Engine

from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.db import LONG_READ_SECONDS, answer_deadline, get_engine
from cortex_tasks.core.tenancy import current_tenant

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Collections that a Cortex feature keeps for itself are named `<owner>:<name>` (document passages:
# `documents:<collection>`). ':' is outside COLLECTION_NAME, and only a store made for that owner
# (`VectorStore(owner=...)`) takes such names, so the /vectors API and embed jobs, whose store has no
# owner, can neither create, read, write nor drop them.
OWNER_NAME = re.compile(r"^[a-z]{1,15}$")
RESERVED_COLLECTION_NAME = re.compile(r"^(?P<owner>[a-z]{1,15}):[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_ID_CHARS = 256
MAX_METADATA_BYTES = 16_384
MAX_FILTER_KEYS = 16
MAX_K = 100
# pgvector indexes `vector` columns of at most 2,000 dimensions.
MAX_DIMENSION = 2000
COPY_CHUNK_ROWS = 2000


class VectorStoreError(CortexError):
    """A request the store cannot honour; `status` and `code` are what an API answers with."""

    status = 422


class CollectionNotFound(VectorStoreError):
    status = 404

    def __init__(self, name: str):
        super().__init__("collection_not_found", f"No vector collection named {name!r}.")


class CollectionConflict(VectorStoreError):
    status = 409


@dataclass(frozen=True)
class Metric:
    name: str
    operator: str  # the SQL distance operator
    opclass: str  # the index operator class that serves it


# The only distance operators and operator classes that ever reach SQL text.
METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("cosine", "<=>", "vector_cosine_ops"),  # distance = 1 - cosine similarity
        Metric("l2", "<->", "vector_l2_ops"),  # Euclidean distance
        Metric("inner_product", "<#>", "vector_ip_ops"),  # distance = -(a . b)
    )
}


def _bounded_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise VectorStoreError("invalid_index", f"{name} must be an integer from {low} to {high}",
                               {"field": name, "value": value})
    return value


@dataclass(frozen=True)
class HnswIndex:
    """Defaults: ef_search 64, ef_construction 200, m 16."""

    m: int = 16
    ef_construction: int = 200
    ef_search: int = 64
    type: ClassVar[str] = "hnsw"

    def __post_init__(self) -> None:
        _bounded_int("m", self.m, 2, 100)
        _bounded_int("ef_construction", self.ef_construction, 4, 1000)
        _bounded_int("ef_search", self.ef_search, 1, 1000)
        if self.ef_construction < 2 * self.m:
            raise VectorStoreError("invalid_index", "ef_construction must be at least 2 * m",
                                   {"m": self.m, "ef_construction": self.ef_construction})

    def build_parameters(self) -> dict[str, int]:
        return {"m": self.m, "ef_construction": self.ef_construction}

    def search_settings(self, override: int | None = None, k: int = 1) -> dict[str, str]:
        value = self.ef_search if override is None else _bounded_int("ef_search", override, 1, 1000)
        # An HNSW scan returns at most ef_search rows: never fewer candidates than asked for.
        return {"hnsw.ef_search": str(max(value, k))}

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "m": self.m, "ef_construction": self.ef_construction,
                "ef_search": self.ef_search}


@dataclass(frozen=True)
class IvfflatIndex:
    """Defaults: nlist 100, nprobe 10."""

    lists: int = 100
    probes: int = 10
    type: ClassVar[str] = "ivfflat"

    def __post_init__(self) -> None:
        _bounded_int("lists", self.lists, 1, 32768)
        _bounded_int("probes", self.probes, 1, self.lists)

    def build_parameters(self) -> dict[str, int]:
        return {"lists": self.lists}

    def search_settings(self, override: int | None = None, k: int = 1) -> dict[str, str]:
        value = self.probes if override is None else _bounded_int("probes", override, 1, self.lists)
        return {"ivfflat.probes": str(value)}

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "lists": self.lists, "probes": self.probes}


IndexConfig = HnswIndex | IvfflatIndex
INDEX_TYPES: dict[str, type[HnswIndex | IvfflatIndex]] = {"hnsw": HnswIndex, "ivfflat": IvfflatIndex}


def index_from_dict(spec: Mapping[str, Any] | None) -> IndexConfig:
    """`{"type": "hnsw", "m": 16, ...}` or `{"type": "ivfflat", "lists": 100, "probes": 10}`."""
    spec = dict(spec or {})
    kind = spec.pop("type", "hnsw")
    index_class = INDEX_TYPES.get(kind)
    if index_class is None:
        raise VectorStoreError("invalid_index", f"index type must be one of {sorted(INDEX_TYPES)}",
                               {"type": kind})
    allowed = set(index_class.__dataclass_fields__)
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise VectorStoreError("invalid_index", f"unknown {kind} index parameters: {', '.join(unknown)}",
                               {"allowed": sorted(allowed)})
    return index_class(**spec)


@dataclass(frozen=True)
class Collection:
    id: int
    name: str
    dimension: int
    metric: str
    index: IndexConfig
    index_state: str  # pending (no vector index yet: exact scans) | ready
    model: str | None
    created_by: str | None = None
    created_at: datetime | None = None
    index_built_at: datetime | None = None

    @property
    def table(self) -> sql.Identifier:
        return sql.Identifier(f"vectors_{self.id}")

    @property
    def vector_index(self) -> sql.Identifier:
        return sql.Identifier(f"vectors_{self.id}_embedding_idx")

    @property
    def metadata_index(self) -> sql.Identifier:
        return sql.Identifier(f"vectors_{self.id}_metadata_idx")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "dimension": self.dimension, "metric": self.metric,
            "index": {**self.index.as_dict(), "state": self.index_state,
                      "built_at": self.index_built_at.isoformat() if self.index_built_at else None},
            "model": self.model, "created_by": self.created_by,
            "created_at": self.created_at.isoformat() if self.created_at else None,
        }


@dataclass(frozen=True)
class Hit:
    id: str
    distance: float
    metadata: dict[str, Any]
    vector: list[float] | None = None

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "distance": self.distance, "metadata": self.metadata}
        if self.vector is not None:
            body["vector"] = self.vector
        return body


@dataclass(frozen=True)
class Group:
    value: str | None
    count: int
    first: dict[str, Any]


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    metric: str
    # index: the query was free to use the vector index (with a selective filter the planner may
    # prefer the metadata index and an exact sort); exact: an exact scan was forced (asked for, no
    # vector index yet, or a filtered index scan found fewer than k matches and an exact scan filled
    # the gap).
    strategy: str
    elapsed_ms: float


@dataclass(frozen=True)
class WriteResult:
    count: int
    elapsed_ms: float
    ids: list[str] = field(default_factory=list)


# --- validation -----------------------------------------------------------------------------------


def check_collection_name(name: Any) -> str:
    if not isinstance(name, str) or not COLLECTION_NAME.match(name):
        raise VectorStoreError("invalid_collection_name",
                               "A collection name is 1-64 characters: letters, digits, '_', '-', '.', "
                               "starting with a letter or digit.", {"name": str(name)[:80]})
    return name


def as_matrix(vectors: Any, dimension: int) -> np.ndarray:
    """Vectors as a C-contiguous float32 (n, dimension) array, or a VectorStoreError naming the bad row."""
    try:
        with np.errstate(over="ignore"):  # overflow to inf is reported below, per row
            matrix = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError):
        raise VectorStoreError("invalid_vector", "vectors must be arrays of numbers of one length") from None
    if matrix.ndim == 1 and matrix.size:
        matrix = matrix.reshape(1, -1)
    if matrix.ndim != 2:
        raise VectorStoreError("invalid_vector", "vectors must be a list of equal-length number arrays")
    if matrix.shape[1] != dimension:
        raise VectorStoreError("dimension_mismatch",
                               f"vectors have {matrix.shape[1]} dimensions; the collection has {dimension}",
                               {"expected": dimension, "got": int(matrix.shape[1])})
    # float64 values beyond float32's range become inf here, so one check covers NaN, inf and overflow.
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise VectorStoreError("invalid_vector", f"vector {bad} has a NaN or infinite value (in float32)",
                               {"index": bad})
    return np.ascontiguousarray(matrix)


def check_ids(ids: Sequence[Any]) -> list[str]:
    checked: list[str] = []
    for index, item_id in enumerate(ids):
        if not isinstance(item_id, str) or not 0 < len(item_id) <= MAX_ID_CHARS or "\x00" in item_id:
            raise VectorStoreError("invalid_id", f"id {index} must be a string of 1-{MAX_ID_CHARS} characters",
                                   {"index": index})
        checked.append(item_id)
    return checked


def encode_metadata(metadata: Sequence[Any] | None, count: int,
                    max_bytes: int = MAX_METADATA_BYTES) -> list[bytes]:
    if metadata is None:
        return [b"{}"] * count
    if len(metadata) != count:
        raise VectorStoreError("invalid_metadata", f"{len(metadata)} metadata objects for {count} vectors")
    encoded: list[bytes] = []
    for index, item in enumerate(metadata):
        if item is None:
            encoded.append(b"{}")
            continue
        if not isinstance(item, dict):
            raise VectorStoreError("invalid_metadata", f"metadata {index} must be a JSON object", {"index": index})
        try:
            raw = json.dumps(item, allow_nan=False, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise VectorStoreError("invalid_metadata", f"metadata {index} is not valid JSON: {exc}",
                                   {"index": index}) from None
        if len(raw) > max_bytes or "\\u0000" in raw.decode():
            raise VectorStoreError("invalid_metadata",
                                   f"metadata {index} is over {max_bytes} bytes or holds a NUL",
                                   {"index": index})
        encoded.append(raw)
    return encoded


def filter_document(filters: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Equality filters: every key must equal its scalar value. Served by `metadata @> $filter`."""
    if not filters:
        return None
    if not isinstance(filters, Mapping) or len(filters) > MAX_FILTER_KEYS:
        raise VectorStoreError("invalid_filter", f"filter must be an object of at most {MAX_FILTER_KEYS} keys")
    for key, value in filters.items():
        if not isinstance(key, str) or not 0 < len(key) <= 128:
            raise VectorStoreError("invalid_filter", "filter keys must be strings of 1-128 characters")
        if isinstance(value, float) and not math.isfinite(value):
            raise VectorStoreError("invalid_filter", f"filter value for {key!r} must be finite")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise VectorStoreError("invalid_filter",
                                   f"filter value for {key!r} must be a string, number, boolean or null",
                                   {"key": key})
    return dict(filters)


def any_of_documents(any_of: Mapping[str, Sequence[Any]] | None) -> list[list[Jsonb]]:
    """Per key, the one-key documents of which an item's metadata must contain one (`key` is any of
    the values), served by `metadata @> ANY(...)`. Keys and values follow filter_document's rules."""
    checked: list[list[Jsonb]] = []
    for key, values in (any_of or {}).items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise VectorStoreError("invalid_filter", f"the choices for {key!r} must be a non-empty list")
        checked.append([Jsonb(filter_document({key: value})) for value in values])
    return checked


def _where(document: dict[str, Any] | None, choices: list[list[Jsonb]]) -> tuple[sql.Composable, dict[str, Any]]:
    """The WHERE clause (or nothing) and its parameters for an equality filter and any-of choices."""
    conditions: list[sql.Composable] = []
    params: dict[str, Any] = {}
    if document is not None:
        conditions.append(sql.SQL("metadata @> %(filter)s"))
        params["filter"] = Jsonb(document)
    for index, options in enumerate(choices):
        conditions.append(sql.SQL("metadata @> ANY({}::jsonb[])").format(sql.Placeholder(f"any_{index}")))
        params[f"any_{index}"] = options
    if not conditions:
        return sql.SQL(""), params
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions), params


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise VectorStoreError("invalid_k", f"k must be an integer from 1 to {MAX_K}")
    return k


# --- binary COPY ---------------------------------------------------------------------------------

_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
_FIELD_COUNT = struct.pack("!h", 3)
_JSONB_VERSION = b"\x01"


def _copy_chunks(ids: list[str], matrix: np.ndarray, metadata: list[bytes]) -> Iterator[bytes]:
    """PostgreSQL's binary COPY stream for (id text, embedding vector, metadata jsonb) rows.

    Each vector field is pgvector's binary form (uint16 dimension, uint16 unused, big-endian float4s),
    written by pgvector's own encoder.
    """
    big_endian = matrix.astype(">f4", copy=False)
    yield _COPY_HEADER
    rows: list[bytes] = []
    for index, item_id in enumerate(ids):
        id_bytes = item_id.encode()
        vector_bytes = Vector(big_endian[index]).to_binary()
        meta = metadata[index]
        rows.append(b"".join((
            _FIELD_COUNT, struct.pack("!i", len(id_bytes)), id_bytes,
            struct.pack("!i", len(vector_bytes)), vector_bytes,
            struct.pack("!i", len(meta) + 1), _JSONB_VERSION, meta,
        )))
        if len(rows) >= COPY_CHUNK_ROWS:
            yield b"".join(rows)
            rows.clear()
    if rows:
        yield b"".join(rows)
    yield _COPY_TRAILER


# --- connections ---------------------------------------------------------------------------------

_type_info: dict[str, TypeInfo] = {}
_type_info_lock = threading.Lock()


def _register_vector_type(conn: psycopg.Connection) -> None:
    """pgvector's adapters on this connection; the type's oid is looked up once per process."""
    key = conn.info.dsn
    info = _type_info.get(key)
    if info is None:
        with _type_info_lock:
            info = _type_info.get(key)
            if info is None:
                info = TypeInfo.fetch(conn, "vector")
                if info is None:
                    raise VectorStoreError("pgvector_missing", "The database has no `vector` extension.")
                _type_info[key] = info
    register_vector_info(conn, info)


COLLECTION_COLUMNS = sql.SQL(
    "id, name, dimension, metric, index_type, index_params, index_state, model, created_by, created_at, "
    "index_built_at")


def _collection_from_row(row: Sequence[Any]) -> Collection:
    index_params = dict(row[5] or {})
    index_params["type"] = row[4]
    return Collection(id=row[0], name=row[1], dimension=row[2], metric=row[3],
                      index=index_from_dict(index_params), index_state=row[6], model=row[7],
                      created_by=row[8], created_at=row[9], index_built_at=row[10])


def _tenant() -> str:
    """The tenant whose collections this call may see; TenantScopeMissing when none is in scope."""
    return current_tenant()


class VectorStore:
    """All collection operations. Safe to share between threads: each call takes its own connection."""

    def __init__(self, engine: Engine | None = None, max_metadata_bytes: int = MAX_METADATA_BYTES,
                 owner: str | None = None) -> None:
        self._engine = engine
        # The /vectors limit by default; a feature that keeps larger items (a passage's text beside its
        # metadata) passes its own, having validated its items' sizes where they came in.
        self.max_metadata_bytes = max_metadata_bytes
        if owner is not None and not OWNER_NAME.match(owner):
            raise ValueError(f"an owner is 1-15 lowercase letters, not {owner!r}")
        self.owner = owner

    def check_name(self, name: Any) -> str:
        """An API collection name, or (for a store with an owner) one of the owner's `<owner>:<name>`."""
        if self.owner is not None and isinstance(name, str):
            reserved = RESERVED_COLLECTION_NAME.match(name)
            if reserved and reserved["owner"] == self.owner:
                return name
        return check_collection_name(name)

    @property
    def engine(self) -> Engine:
        if self._engine is not None:
            return self._engine

        return get_engine()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled psycopg connection with pgvector's adapters, in one transaction."""
        pooled = self.engine.raw_connection()
        conn: psycopg.Connection = pooled.driver_connection  # type: ignore[assignment]
        try:
            _register_vector_type(conn)
            yield conn
            conn.commit()
        except psycopg.OperationalError as exc:
            pooled.invalidate()
            # As SQLAlchemy's error, so that task retry policies (retry_policy.TRANSIENT_ERRORS) retry it.
            raise sqlalchemy.exc.OperationalError("vector store", None, exc) from exc
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise
        finally:
            pooled.close()

    # --- collections ---

    def _find(self, conn: psycopg.Connection, name: str, lock: bool = False) -> Collection:
        """The collection's row, held until the transaction ends. Every use holds it (KEY SHARE), so a drop
        (DELETE of the row, then DROP TABLE) waits for the operations already on its table, and those that
        come after find no row: none meets a dropped table (an error from PostgreSQL, a 500). `lock` (an
        index build, which rewrites the row) is NO KEY UPDATE: builds wait for each other, but searches and
        writes go on beside one."""
        query = sql.SQL("SELECT {} FROM vector_collections WHERE tenant = %s AND name = %s{}").format(
            COLLECTION_COLUMNS, sql.SQL(" FOR NO KEY UPDATE") if lock else sql.SQL(" FOR KEY SHARE"))
        row = conn.execute(query, (_tenant(), self.check_name(name))).fetchone()
        if row is None:
            raise CollectionNotFound(name)
        return _collection_from_row(row)

    def get_collection(self, name: str) -> Collection:
        with self.connection() as conn:
            return self._find(conn, name)

    def list_collections(self, reserved: bool = False) -> list[Collection]:
        """The API's collections; with `reserved`, instead the owner's `<owner>:<name>` ones."""
        if not reserved:
            where, params = sql.SQL("WHERE tenant = %s AND strpos(name, ':') = 0"), (_tenant(),)
        elif self.owner is None:
            raise ValueError("only a store with an owner lists reserved collections")
        else:
            where, params = sql.SQL("WHERE tenant = %s AND starts_with(name, %s)"), (_tenant(), f"{self.owner}:")
        with self.connection() as conn:
            rows = conn.execute(sql.SQL("SELECT {} FROM vector_collections {} ORDER BY name").format(
                COLLECTION_COLUMNS, where), params).fetchall()
        return [_collection_from_row(row) for row in rows]

    def create_collection(self, name: str, dimension: int, metric: str = "cosine",
                          index: IndexConfig | Mapping[str, Any] | None = None, model: str | None = None,
                          created_by: str | None = None, build_index: bool = True,
                          exist_ok: bool = False) -> Collection:
        """Create a collection and its table. `build_index=False` leaves the vector index to
        `build_index()`: load first, index after, as pgvector recommends for IVFFlat (its lists are
        trained on the rows present) and as is much faster for a large HNSW load."""
        self.check_name(name)
        _bounded_int("dimension", dimension, 1, MAX_DIMENSION)
        if metric not in METRICS:
            raise VectorStoreError("invalid_metric", f"metric must be one of {sorted(METRICS)}", {"metric": metric})
        config = index if isinstance(index, (HnswIndex, IvfflatIndex)) else index_from_dict(index)
        params = {key: value for key, value in config.as_dict().items() if key != "type"}
        try:
            with self.connection() as conn:
                row = conn.execute(
                    sql.SQL("INSERT INTO vector_collections (tenant, name, dimension, metric, index_type, "
                            "index_params, index_state, model, created_by) "
                            "VALUES (%s, %s, %s, %s, %s, %s, 'pending', %s, %s) RETURNING {}").format(COLLECTION_COLUMNS),
                    (_tenant(), name, dimension, metric, config.type, Jsonb(params), model, created_by),
                ).fetchone()
                collection = _collection_from_row(row)
                conn.execute(sql.SQL(
                    "CREATE TABLE {table} (id text PRIMARY KEY, embedding vector({dimension}) NOT NULL, "
                    "metadata jsonb NOT NULL DEFAULT '{{}}'::jsonb, "
                    "updated_at timestamptz NOT NULL DEFAULT now())"
                ).format(table=collection.table, dimension=sql.Literal(dimension)))
                conn.execute(sql.SQL("CREATE INDEX {name} ON {table} USING gin (metadata jsonb_path_ops)").format(
                    name=collection.metadata_index, table=collection.table))
                if build_index:
                    collection = self._build_index(conn, collection)
            return collection
        except psycopg.errors.UniqueViolation:
            existing = self.get_collection(name)
            same = (existing.dimension, existing.metric, existing.index, existing.model) == (
                dimension, metric, config, model)
            if exist_ok and same:
                return existing
            raise CollectionConflict("collection_exists", f"A collection named {name!r} already exists"
                                     + ("" if same else " with another configuration") + ".",
                                     {"existing": existing.as_dict()}) from None

    def ensure_collection(self, name: str, dimension: int, model: str | None = None,
                          created_by: str | None = None) -> Collection:
        """The named collection, created with the default index and cosine metric if it does not exist."""
        try:
            collection = self.get_collection(name)
        except CollectionNotFound:
            try:
                return self.create_collection(name, dimension, model=model, created_by=created_by)
            except CollectionConflict:
                collection = self.get_collection(name)  # created by a concurrent writer
        if collection.dimension != dimension:
            raise VectorStoreError("dimension_mismatch",
                                   f"collection {name!r} holds {collection.dimension}-dimensional vectors, "
                                   f"not {dimension}", {"expected": collection.dimension, "got": dimension})
        return collection

    def drop_collection(self, name: str) -> bool:
        with self.connection() as conn:
            row = conn.execute("DELETE FROM vector_collections WHERE tenant = %s AND name = %s RETURNING id",
                               (_tenant(), self.check_name(name))).fetchone()
            if row is None:
                return False
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(f"vectors_{row[0]}")))
        return True

    def _build_index(self, conn: psycopg.Connection, collection: Collection) -> Collection:
        metric = METRICS[collection.metric]
        options = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.SQL(key), sql.Literal(value))  # keys: fixed dataclass fields
            for key, value in collection.index.build_parameters().items())
        # HNSW builds are far faster when the whole graph fits in maintenance_work_mem (pgvector's advice);
        # raised for the index build's own transaction only.
        conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", (get_settings().vector_build_memory,))
        # Build beside the old index and swap at the end: CREATE INDEX blocks writes but not reads,
        # and the old index keeps serving searches until the new one is complete.
        fresh = sql.Identifier(f"vectors_{collection.id}_embedding_new")
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(fresh))
        conn.execute(sql.SQL("CREATE INDEX {name} ON {table} USING {method} (embedding {opclass}) WITH ({options})")
                     .format(name=fresh, table=collection.table,
                             method=sql.SQL(collection.index.type), opclass=sql.SQL(metric.opclass),
                             options=options))
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(collection.vector_index))
        conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(fresh, collection.vector_index))
        row = conn.execute(
            sql.SQL("UPDATE vector_collections SET index_state = 'ready', index_built_at = now() "
                    "WHERE id = %s RETURNING {}").format(COLLECTION_COLUMNS), (collection.id,)).fetchone()
        return _collection_from_row(row)

    def build_index(self, name: str) -> float:
        """(Re)build the collection's vector index over the rows it holds now; returns the seconds taken."""
        started = time.perf_counter()
        with self.connection() as conn:
            collection = self._find(conn, name, lock=True)
            self._build_index(conn, collection)
            conn.execute(sql.SQL("ANALYZE {}").format(collection.table))  # fresh statistics for the planner
        return time.perf_counter() - started

    def describe(self, name: str) -> dict[str, Any]:
        with self.connection() as conn:
            collection = self._find(conn, name)
            count, table_bytes, index_bytes = conn.execute(
                sql.SQL("SELECT (SELECT count(*) FROM {table}), pg_total_relation_size(%s::regclass), "
                        "coalesce(pg_relation_size(to_regclass(%s)), 0)").format(table=collection.table),
                (f"vectors_{collection.id}", f"vectors_{collection.id}_embedding_idx"),
            ).fetchone()
        return {**collection.as_dict(), "count": count, "table_bytes": table_bytes, "index_bytes": index_bytes}

    # --- items ---

    def upsert(self, name: str, ids: Sequence[str], vectors: Any,
               metadata: Sequence[dict[str, Any] | None] | None = None) -> WriteResult:
        """Insert or replace items by id, through a binary COPY into a staging table and one merge.

        Within one call the last occurrence of an id wins (a single INSERT ... ON CONFLICT cannot touch
        the same row twice).
        """
        return self._write(name, ids, vectors, metadata, replace=True)

    def insert(self, name: str, ids: Sequence[str], vectors: Any,
               metadata: Sequence[dict[str, Any] | None] | None = None) -> WriteResult:
        """The bulk-load path for new ids: a binary COPY straight into the collection's table.
        An id that already exists fails the whole call (409 `duplicate_id`)."""
        return self._write(name, ids, vectors, metadata, replace=False)

    def _write(self, name: str, ids: Sequence[str], vectors: Any,
               metadata: Sequence[dict[str, Any] | None] | None, replace: bool) -> WriteResult:
        started = time.perf_counter()
        checked_ids = check_ids(ids)
        if not checked_ids:
            return WriteResult(0, 0.0)
        encoded = encode_metadata(metadata, len(checked_ids), self.max_metadata_bytes)
        with self.connection() as conn:
            collection = self._find(conn, name)
            matrix = as_matrix(vectors, collection.dimension)
            if matrix.shape[0] != len(checked_ids):
                raise VectorStoreError("invalid_vector", f"{matrix.shape[0]} vectors for {len(checked_ids)} ids")
            if replace:
                checked_ids, matrix, encoded = _last_occurrence_wins(checked_ids, matrix, encoded)
                target = sql.Identifier("vector_upsert_staging")
                conn.execute(sql.SQL("CREATE TEMP TABLE {staging} (id text, embedding vector({dimension}), "
                                     "metadata jsonb) ON COMMIT DROP").format(
                    staging=target, dimension=sql.Literal(collection.dimension)))
            else:
                target = collection.table
            try:
                statement = sql.SQL("COPY {} (id, embedding, metadata) FROM STDIN (FORMAT BINARY)").format(target)
                with conn.cursor() as cursor, cursor.copy(statement) as copy:
                    for chunk in _copy_chunks(checked_ids, matrix, encoded):
                        copy.write(chunk)
            except psycopg.errors.UniqueViolation:
                raise CollectionConflict("duplicate_id", "An id in the batch already exists in the "
                                         "collection or repeats within it; use upsert to replace items.") from None
            if replace:
                conn.execute(sql.SQL(
                    "INSERT INTO {table} (id, embedding, metadata) SELECT id, embedding, metadata FROM {staging} "
                    "ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, "
                    "metadata = EXCLUDED.metadata, updated_at = now()"
                ).format(table=collection.table, staging=target))
        return WriteResult(len(checked_ids), round((time.perf_counter() - started) * 1000, 2), checked_ids)

    def delete(self, name: str, ids: Sequence[str]) -> int:
        checked = check_ids(ids)
        with self.connection() as conn:
            collection = self._find(conn, name)
            cursor = conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(collection.table), (checked,))
            return cursor.rowcount

    def count(self, name: str, filters: Mapping[str, Any] | None = None) -> int:
        where, params = _where(filter_document(filters), [])
        with self.connection() as conn:
            collection = self._find(conn, name)
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}{}").format(collection.table, where),
                               params).fetchone()
        return int(row[0])

    def delete_where(self, name: str, filters: Mapping[str, Any]) -> int:
        """Delete the items whose metadata matches every equality filter; returns how many."""
        document = filter_document(filters)
        if document is None:
            raise VectorStoreError("invalid_filter", "delete_where needs at least one filter key")
        where, params = _where(document, [])
        with self.connection() as conn:
            collection = self._find(conn, name)
            return conn.execute(sql.SQL("DELETE FROM {}{}").format(collection.table, where), params).rowcount

    def items(self, name: str, filters: Mapping[str, Any] | None = None,
              any_of: Mapping[str, Sequence[Any]] | None = None, include_vectors: bool = False) -> list[Hit]:
        """Every item matching the filters (distance 0), in id order."""
        where, params = _where(filter_document(filters), any_of_documents(any_of))
        with self.connection() as conn:
            collection = self._find(conn, name)
            with conn.cursor(binary=True) as cursor:
                rows = cursor.execute(sql.SQL("SELECT id, metadata, {} FROM {}{} ORDER BY id").format(
                    sql.SQL("embedding") if include_vectors else sql.SQL("NULL::vector"), collection.table, where),
                    params).fetchall()
        return [Hit(row[0], 0.0, row[1], row[2].tolist() if include_vectors else None) for row in rows]

    def groups(self, name: str, key: str, first_by: str, omit: Sequence[str] = ()) -> list[Group]:
        """The items grouped by the (text) value of one metadata key: per group, how many items and the
        metadata of its first item by the value of `first_by`, less the keys in `omit`."""
        with self.connection() as conn:
            collection = self._find(conn, name)
            rows = conn.execute(sql.SQL(
                "SELECT metadata->>%(key)s, count(*), "
                "(array_agg(metadata - %(omit)s::text[] ORDER BY metadata->%(first_by)s, id))[1] "
                "FROM {} GROUP BY 1 ORDER BY 1").format(collection.table),
                {"key": key, "first_by": first_by, "omit": list(omit)}).fetchall()
        return [Group(row[0], int(row[1]), row[2]) for row in rows]

    def get(self, name: str, ids: Sequence[str], include_vectors: bool = False) -> list[Hit]:
        """Items by id (in the order asked; missing ids are left out), distance 0."""
        checked = check_ids(ids)
        with self.connection() as conn:
            collection = self._find(conn, name)
            with conn.cursor(binary=True) as cursor:
                rows = cursor.execute(
                    sql.SQL("SELECT id, metadata, {} FROM {} WHERE id = ANY(%s)").format(
                        sql.SQL("embedding") if include_vectors else sql.SQL("NULL::vector"), collection.table),
                    (checked,)).fetchall()
        found = {row[0]: row for row in rows}
        return [Hit(item_id, 0.0, found[item_id][1],
                    found[item_id][2].tolist() if include_vectors else None)
                for item_id in checked if item_id in found]

    # --- search ---

    def _search_sql(self, collection: Collection, where: sql.Composable, include_vectors: bool,
                    exact: bool) -> sql.Composed:
        operator = sql.SQL(METRICS[collection.metric].operator)
        # psycopg prepares a statement after a few runs and PostgreSQL keeps its plan across setting
        # changes, so an exact scan must not share its text with the indexed query.
        return sql.SQL(
            "SELECT {marker}id, embedding {op} %(query)b AS distance, metadata{vector} FROM {table}{where} "
            "ORDER BY embedding {op} %(query)b LIMIT %(k)s"
        ).format(marker=sql.SQL("/* exact */ " if exact else ""), op=operator, table=collection.table,
                 vector=sql.SQL(", embedding") if include_vectors else sql.SQL(""), where=where)

    def _apply_search_settings(self, conn: psycopg.Connection, collection: Collection, exact: bool,
                               effort: int | None, k: int) -> None:
        settings = {"enable_indexscan": "off"} if exact else collection.index.search_settings(effort, k)
        for setting, value in settings.items():  # setting names come from this module only
            conn.execute("SELECT set_config(%s, %s, true)", (setting, value))

    def search(self, name: str, vector: Any, k: int = 10, filters: Mapping[str, Any] | None = None, *,
               exact: bool = False, effort: int | None = None, include_vectors: bool = False,
               any_of: Mapping[str, Sequence[Any]] | None = None) -> SearchResult:
        """The k nearest items. `effort` overrides ef_search (HNSW) or probes (IVFFlat) for this query;
        `exact=True` forces a sequential scan (the ground truth approximate results are measured against).
        `any_of` ({key: [values]}) keeps the items whose `key` is one of the values, beside `filters`."""
        started = time.perf_counter()
        check_k(k)
        where, filter_params = _where(filter_document(filters), any_of_documents(any_of))
        filtered = bool(filter_params)
        # An exact search scans the collection: not bound like a request's statements (db.answer_deadline).
        with answer_deadline(LONG_READ_SECONDS), self.connection() as conn:
            collection = self._find(conn, name)
            query = as_matrix(vector, collection.dimension)[0]
            use_exact = exact or collection.index_state != "ready"
            params = {"query": query, "k": k, **filter_params}
            self._apply_search_settings(conn, collection, use_exact, effort, k)
            with conn.cursor(binary=include_vectors) as cursor:
                rows = cursor.execute(self._search_sql(collection, where, include_vectors, use_exact),
                                      params).fetchall()
            strategy = "exact" if use_exact else "index"
            if filtered and len(rows) < k and not use_exact:
                # pgvector filters after the index scan: a selective filter can leave fewer than k of the
                # ef_search candidates. An exact scan (helped by the metadata GIN index) fills the gap.
                self._apply_search_settings(conn, collection, True, None, k)
                with conn.cursor(binary=include_vectors) as cursor:
                    rows = cursor.execute(self._search_sql(collection, where, include_vectors, True),
                                          params).fetchall()
                strategy = "exact"
        hits = [Hit(row[0], float(row[1]), row[2], row[3].tolist() if include_vectors else None) for row in rows]
        return SearchResult(hits, collection.metric, strategy, round((time.perf_counter() - started) * 1000, 3))

    def explain(self, name: str, vector: Any, k: int = 10, filters: Mapping[str, Any] | None = None,
                exact: bool = False) -> str:
        """The plan PostgreSQL chooses for this search (to check that the vector index is used)."""
        where, filter_params = _where(filter_document(filters), [])
        with self.connection() as conn:
            collection = self._find(conn, name)
            query = as_matrix(vector, collection.dimension)[0]
            use_exact = exact or collection.index_state != "ready"
            self._apply_search_settings(conn, collection, use_exact, None, check_k(k))
            statement = sql.SQL("EXPLAIN ") + self._search_sql(collection, where, False, use_exact)
            rows = conn.execute(statement, {"query": query, "k": check_k(k), **filter_params}).fetchall()
        return "\n".join(row[0] for row in rows)


def _last_occurrence_wins(ids: list[str], matrix: np.ndarray,
                          metadata: list[bytes]) -> tuple[list[str], np.ndarray, list[bytes]]:
    positions = {item_id: index for index, item_id in enumerate(ids)}
    if len(positions) == len(ids):
        return ids, matrix, metadata
    keep = sorted(positions.values())
    return [ids[i] for i in keep], matrix[keep], [metadata[i] for i in keep]
