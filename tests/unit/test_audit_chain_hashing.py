"""The audit chain's hashing and its walk, on rows built here: a row hashes the same before it is stored
and after JSONB gives it back, and the walk names the first break by its kind."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from cortex_tasks.core.audit.chain import GENESIS, _walk, row_hash

AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def fields(event_id: int, **changes) -> dict:
    return {"id": event_id, "at": AT, "event_type": "configuration_changes", "action": "key.create",
            "tenant": "default", "actor_key_id": "abc123", "actor_role": "model_admin", "resource": "k1",
            "outcome": "success", "ip": "127.0.0.1", "count": 1, "details": {"status": 201}, **changes}


def test_numbers_hash_as_what_jsonb_gives_back():
    # JSONB answers 300.0 as 300.0 but 1e20 as 100000000000000000000: the hash must not tell them apart.
    assert row_hash(fields(1, details={"traffic": 300.0}), GENESIS) == row_hash(fields(1, details={"traffic": 300}),
                                                                                 GENESIS)
    assert row_hash(fields(1, details={"n": 1e20}), GENESIS) == row_hash(fields(1, details={"n": 10**20}), GENESIS)
    assert row_hash(fields(1, details={"n": 0.1}), GENESIS) != row_hash(fields(1, details={"n": "0.1"}), GENESIS)


def test_times_hash_as_the_same_instant_in_any_zone():
    elsewhere = AT.astimezone(timezone(timedelta(hours=5)))
    assert row_hash(fields(1, at=elsewhere), GENESIS) == row_hash(fields(1), GENESIS)
    with pytest.raises(ValueError):
        row_hash(fields(1, at=AT.replace(tzinfo=None)), GENESIS)


@pytest.mark.parametrize("name", ["id", "at", "tenant", "actor_key_id", "action", "resource", "count", "details"])
def test_every_field_is_covered(name):
    changed = {"id": 2, "at": AT + timedelta(microseconds=1), "tenant": "other", "actor_key_id": "x",
               "action": "key.revoke", "resource": "k2", "count": 2, "details": {"status": 500}}
    assert row_hash(fields(1, **{name: changed[name]}), GENESIS) != row_hash(fields(1), GENESIS)


def chain_of(count: int) -> list[SimpleNamespace]:
    rows, previous = [], GENESIS
    for event_id in range(10, 10 * count + 1, 10):  # with gaps, as a sequence leaves after rollbacks
        row = fields(event_id, resource=f"k{event_id}")
        digest = row_hash(row, previous)
        rows.append(SimpleNamespace(**row, prev_hash=previous, row_hash=digest, _mapping=row))
        previous = digest
    return rows


def head(rows, start_after_id=None, start_hash=GENESIS):
    return SimpleNamespace(head_id=rows[-1].id if rows else None, head_hash=rows[-1].row_hash if rows else GENESIS,
                           start_after_id=start_after_id, start_hash=start_hash)


def test_an_intact_chain_walks_to_the_end():
    rows = chain_of(5)
    assert _walk(iter(rows), head(rows)) == (5, None)


def test_a_changed_row_is_named():
    rows = chain_of(5)
    rows[2]._mapping = {**rows[2]._mapping, "details": {"status": 500}}
    count, broken = _walk(iter(rows), head(rows))
    assert (count, broken.row_id, broken.kind) == (2, 30, "content_changed")


def test_a_missing_row_is_named_by_the_row_after_the_gap():
    rows = chain_of(5)
    _, broken = _walk(iter(rows[:2] + rows[3:]), head(rows))
    assert (broken.row_id, broken.kind) == (40, "rows_missing")


def test_an_inserted_row_is_named():
    rows = chain_of(4)
    # A well-formed row slipped in after row 20, linking to it; row 30 still links to row 20.
    extra = fields(25, resource="forged")
    forged = SimpleNamespace(**extra, prev_hash=rows[1].row_hash, row_hash=row_hash(extra, rows[1].row_hash),
                             _mapping=extra)
    _, broken = _walk(iter(rows[:2] + [forged] + rows[2:]), head(rows))
    assert (broken.row_id, broken.kind) == (25, "row_inserted")


def test_missing_rows_at_either_end_are_named():
    rows = chain_of(5)
    assert _walk(iter(rows[1:]), head(rows))[1].kind == "start_missing"
    _, broken = _walk(iter(rows[:3]), head(rows))
    assert (broken.row_id, broken.kind) == (50, "end_missing")
    assert _walk(iter([]), head(rows))[1].kind == "end_missing"


def test_a_chain_started_after_retention_links_to_the_recorded_start():
    rows = chain_of(5)
    assert _walk(iter(rows[2:]), head(rows, start_after_id=20, start_hash=rows[1].row_hash)) == (3, None)
    assert _walk(iter(rows[3:]), head(rows, start_after_id=20, start_hash=rows[1].row_hash))[1].kind == "start_missing"


def test_a_row_past_the_head_is_outside_the_chain():
    rows = chain_of(5)
    _, broken = _walk(iter(rows), head(rows[:4]))
    assert (broken.row_id, broken.kind) == (50, "outside_chain")
