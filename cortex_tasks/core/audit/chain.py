"""The audit log's hash chain: how a row is hashed, and checking the whole log against its hashes.

Each row's `row_hash` is the SHA-256 of a canonical serialization of its fields (id, time, type, action,
tenant, actor, resource, outcome, ip, count, details) and of `prev_hash`, the row_hash of the row before
it in id order. The first row's prev_hash is GENESIS or, once retention has deleted the oldest rows, the
hash of the last row deleted (kept in `audit_chain.start_hash`). `audit_chain` also holds the head: the
id and hash of the last row appended.

What a check finds: a row whose fields were changed no longer matches its own hash; a row deleted from
the middle leaves the next row linking to a hash no row has; a row slipped in between breaks the link of
the row after it; rows deleted from the start no longer link to the recorded start, and rows deleted
from the end leave the head pointing past the last row. Someone able to rewrite a row *and* every later
hash *and* the head (the database owner, with the triggers disabled) is caught only by comparing the head
with a copy kept outside the database: `cortex audit verify` prints it for that.

The serialization is JSON with sorted keys. JSONB keeps numbers as decimals and gives 300.0 back as 300.0
but 1e20 as 100000000000000000000, so every number is written as what it means (an integral value as an
integer) and a row hashes the same before it is stored and after it is read back.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, select

from cortex_tasks.core.storage.tables import AuditChain, AuditEvent

GENESIS = "0" * 64  # the prev_hash of the first row ever written
CHAIN_ID = 1  # audit_chain holds one row
HASHED_FIELDS = ("id", "at", "event_type", "action", "tenant", "actor_key_id", "actor_role", "resource",
                 "outcome", "ip", "count", "details")
VERIFY_FETCH_ROWS = 2000


def _number(value: float) -> int | float | str:
    if not math.isfinite(value):
        return repr(value)  # never stored (JSONB refuses them); kept apart from any real number
    if value.is_integer():
        return int(Decimal(repr(value)))  # the decimal the float was written as, as JSONB keeps it
    return value


def _canonical_value(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, Decimal):
        return _number(float(value))
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("audit times must carry a time zone")
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, Mapping):
        return {str(key): _canonical_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical_value(item) for item in value]
    raise TypeError(f"cannot hash a {type(value).__name__} in an audit row")


def canonical(fields: Mapping[str, Any], prev_hash: str) -> bytes:
    """The bytes a row's hash covers: its hashed fields and the hash of the row before it."""
    document = {name: _canonical_value(fields.get(name)) for name in HASHED_FIELDS}
    document["prev_hash"] = prev_hash
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def row_hash(fields: Mapping[str, Any], prev_hash: str) -> str:
    return hashlib.sha256(canonical(fields, prev_hash)).hexdigest()


@dataclass(frozen=True)
class Break:
    """The first place the chain does not hold."""

    row_id: int | None
    kind: str  # content_changed | rows_missing | row_inserted | start_missing | end_missing | outside_chain
    message: str


@dataclass(frozen=True)
class ChainReport:
    rows: int
    head_id: int | None
    head_hash: str
    start_after_id: int | None  # the last row retention deleted
    broken: Break | None

    @property
    def ok(self) -> bool:
        return self.broken is None

    def summary(self) -> str:
        if self.broken is None:
            return f"OK: {self.rows} rows, chain intact"
        return f"BROKEN at row {self.broken.row_id}: {self.broken.message}"

    def to_api(self) -> dict[str, Any]:
        return {"ok": self.ok, "rows": self.rows, "head": {"id": self.head_id, "hash": self.head_hash},
                "start_after_id": self.start_after_id,
                "broken": None if self.broken is None else {
                    "row_id": self.broken.row_id, "kind": self.broken.kind, "message": self.broken.message}}


_COLUMNS = [getattr(AuditEvent, name) for name in HASHED_FIELDS] + [AuditEvent.prev_hash, AuditEvent.row_hash]


def verify_chain(engine: Engine | None = None) -> ChainReport:
    """Walk the whole log in id order, recompute every hash and check every link; stop at the first break.
    One REPEATABLE READ snapshot, so rows appended meanwhile neither count nor break anything."""
    if engine is None:
        from cortex_tasks.core.storage.db import get_engine

        engine = get_engine()
    from cortex_tasks.core.storage.db import LONG_READ_SECONDS, answer_deadline

    snapshot = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
    # It reads the whole log: not bound like a request's statements (storage/db.py answer_deadline).
    with answer_deadline(LONG_READ_SECONDS), engine.connect().execution_options(**snapshot) as conn, conn.begin():
        chain = conn.execute(select(AuditChain).where(AuditChain.id == CHAIN_ID)).one_or_none()
        if chain is None:
            return ChainReport(0, None, GENESIS, None, Break(None, "start_missing", "the audit_chain row is missing"))
        rows = conn.execute(select(*_COLUMNS).order_by(AuditEvent.id).execution_options(yield_per=VERIFY_FETCH_ROWS))
        count, broken = _walk(rows, chain)
        return ChainReport(count, chain.head_id, chain.head_hash, chain.start_after_id, broken)


def _walk(rows: Iterator[Any], chain: Any) -> tuple[int, Break | None]:
    expected = chain.start_hash
    start = (f"the hash of row {chain.start_after_id}, the last row retention deleted"
             if chain.start_after_id is not None else "the genesis hash")
    before: tuple[int, str] | None = None  # (id, row_hash) of the row before this one
    two_before: tuple[int, str] | None = None
    count = 0
    for row in rows:
        fields = row._mapping
        if chain.head_id is None or row.id > chain.head_id:
            return count, Break(row.id, "outside_chain",
                                f"row {row.id} comes after the chain's head (row {chain.head_id}): "
                                "it was not appended through the audit writer")
        if row_hash(fields, row.prev_hash) != row.row_hash:
            return count, Break(row.id, "content_changed",
                                f"row {row.id} was changed: its fields no longer match its row_hash")
        if row.prev_hash != expected:
            if before is None:
                return count, Break(row.id, "start_missing",
                                    f"row {row.id}, the first row, does not link to {start}: "
                                    "rows before it are missing")
            if two_before is not None and row.prev_hash == two_before[1]:
                return count, Break(before[0], "row_inserted",
                                    f"row {before[0]} was inserted: row {row.id} links to row {two_before[0]}")
            return count, Break(row.id, "rows_missing",
                                f"rows are missing before row {row.id}: it does not link to row {before[0]}, "
                                "the row before it (or that row was rewritten with a new hash)")
        count += 1
        two_before, before = before, (row.id, row.row_hash)
        expected = row.row_hash
    if before is None:
        if chain.head_id is not None and chain.head_id != chain.start_after_id:
            return count, Break(chain.head_id, "end_missing",
                                f"the log is empty, but its head is row {chain.head_id}")
        return count, None
    if before[0] != chain.head_id:
        return count, Break(chain.head_id, "end_missing",
                            f"rows are missing at the end: the last row is {before[0]}, the chain's head is "
                            f"row {chain.head_id}")
    if before[1] != chain.head_hash:
        return count, Break(chain.head_id, "rows_missing",
                            f"row {chain.head_id} does not have the head's hash: the chain was rewritten")
    return count, None
