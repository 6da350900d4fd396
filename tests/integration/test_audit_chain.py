"""The audit log's hash chain on real PostgreSQL: events written through the gateway verify, concurrent
writers do not fork the chain, the database refuses to change or delete rows, tampering done as the
table's owner with the triggers disabled is found and named, retention keeps the chain verifiable, and
migration 0009 chains the rows it finds.

Tampering happens in databases of their own, created here and dropped after: the session's log must
stay intact for the other tests."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from click.testing import CliRunner
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from cortex_tasks.cli import main
from cortex_tasks.core.audit.chain import GENESIS, verify_chain
from cortex_tasks.core.audit.service import AuditRecord, purge_older_than, query_events, record_events
from cortex_tasks.core.storage.db import get_engine
from cortex_tasks.core.storage.migrate import MIGRATIONS_DIR
from tests.support.databases import scratch_database

ROOT = Path(__file__).resolve().parents[2]


def _alembic(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@pytest.fixture()
def flush(app):
    """Write the gateway's buffered events now (the writer thread would within a second)."""
    return app.extensions["cortex_audit"].flush


@pytest.fixture()
def database_url() -> Iterator[str]:
    with scratch_database("cortex_audit") as url:
        yield url


@pytest.fixture()
def own_log(database_url) -> Iterator[Engine]:
    """A migrated database of its own, for tests that break or purge the log."""
    command.upgrade(_alembic(database_url), "heads")
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def change(resource: str, at: datetime | None = None, **details) -> AuditRecord:
    return AuditRecord("configuration_changes", "test.change", "success", actor_key_id="abc123def456",
                       actor_role="model_admin", resource=resource, tenant="default", details=details,
                       **({"at": at} if at else {}))


def ids_of(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.scalars(text("SELECT id FROM audit_events ORDER BY id")))


def superuser_tamper(engine: Engine, trigger: str, statement: str, params: dict) -> None:
    """What only the table's owner can do: switch the append-only trigger off for one statement."""
    with engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE audit_events DISABLE TRIGGER {trigger}"))
        conn.execute(text(statement), params)
        conn.execute(text(f"ALTER TABLE audit_events ENABLE TRIGGER {trigger}"))


def cli_verify(database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "PYTHONPATH": str(ROOT)}
    command_line = [sys.executable, "-c", "from cortex_tasks.cli import main; main()", "audit", "verify"]
    return subprocess.run(command_line, env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


# --- the session's log, written by the gateway ---


def test_gateway_events_chain_and_verify(app, admin_api, keys, flush):
    created = admin_api.post("/api/v1/keys", {"role": "reader", "name": "chained"}).get_json()
    assert admin_api.delete(f"/api/v1/keys/{created['key_id']}").status_code == 200
    assert app.test_client().get("/api/v1/models").status_code == 401
    flush()
    report = admin_api.as_key(keys["platform_admin"]).get("/api/v1/audit/verify").get_json()
    assert report["ok"] is True and report["broken"] is None and report["rows"] >= 3, report
    assert len(report["head"]["hash"]) == 64

    result = CliRunner().invoke(main, ["audit", "verify"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("OK: ") and "rows, chain intact" in result.output

    admin = keys["model_admin"].split("_", 2)[1]
    made = [event for event in query_events("configuration_changes", actor=admin)[0]
            if event["resource"] == created["key_id"]]
    assert {(event["action"], event["tenant"]) for event in made} == {("key.create", "default"),
                                                                      ("key.revoke", "default")}
    for role in ("reader", "inference_user", "model_admin"):
        assert admin_api.as_key(keys[role]).get("/api/v1/audit/verify").status_code == 403


def test_concurrent_writers_do_not_fork_the_chain():
    marker = f"concurrent-{uuid.uuid4().hex[:8]}"

    def write(writer: int) -> None:
        for flush_number in range(10):
            record_events([change(marker, writer=writer, flush=flush_number, item=item) for item in range(5)])

    with ThreadPoolExecutor(8) as pool:
        for done in [pool.submit(write, writer) for writer in range(8)]:
            done.result(timeout=120)
    report = verify_chain()
    assert report.ok, report.summary()
    with get_engine().connect() as conn:
        written = conn.scalar(text("SELECT count(*) FROM audit_events WHERE resource = :marker"), {"marker": marker})
    assert written == 8 * 10 * 5


def test_the_database_refuses_to_change_the_log():
    record_events([change(f"refuse-{uuid.uuid4().hex[:8]}")])
    engine = get_engine()
    attempts = ["UPDATE audit_events SET details = '{}' WHERE id = (SELECT max(id) FROM audit_events)",
                "DELETE FROM audit_events WHERE id = (SELECT max(id) FROM audit_events)",
                "TRUNCATE audit_events",
                "DELETE FROM audit_chain"]
    for statement in attempts:
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    assert verify_chain().ok


# --- logs of their own, tampered with as the owner ---


def test_a_changed_row_is_named(own_log, database_url):
    record_events([change(f"r{number}", number=number) for number in range(5)], own_log)
    assert verify_chain(own_log).summary() == "OK: 5 rows, chain intact"
    target = ids_of(own_log)[2]
    superuser_tamper(own_log, "audit_events_no_update",
                     "UPDATE audit_events SET details = '{\"number\": 99}' WHERE id = :id", {"id": target})
    report = verify_chain(own_log)
    assert (report.broken.row_id, report.broken.kind) == (target, "content_changed")
    assert report.summary().startswith(f"BROKEN at row {target}: row {target} was changed")

    result = cli_verify(database_url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith(f"BROKEN at row {target}")


def test_a_rewritten_row_with_a_fresh_hash_breaks_the_next_link(own_log):
    from cortex_tasks.core.audit.chain import row_hash

    record_events([change(f"r{number}") for number in range(4)], own_log)
    with own_log.connect() as conn:
        row = conn.execute(text("SELECT * FROM audit_events ORDER BY id OFFSET 1 LIMIT 1")).mappings().one()
    forged = {**row, "resource": "forged"}
    superuser_tamper(own_log, "audit_events_no_update",
                     "UPDATE audit_events SET resource = 'forged', row_hash = :hash WHERE id = :id",
                     {"hash": row_hash(forged, row["prev_hash"]), "id": row["id"]})
    report = verify_chain(own_log)
    assert (report.broken.row_id, report.broken.kind) == (ids_of(own_log)[2], "rows_missing")


def test_a_deleted_row_is_named_by_the_gap(own_log):
    record_events([change(f"r{number}") for number in range(5)], own_log)
    ids = ids_of(own_log)
    superuser_tamper(own_log, "audit_events_delete_prefix", "DELETE FROM audit_events WHERE id = :id",
                     {"id": ids[2]})
    report = verify_chain(own_log)
    assert (report.broken.row_id, report.broken.kind) == (ids[3], "rows_missing")
    assert f"rows are missing before row {ids[3]}: it does not link to row {ids[1]}" in report.summary()


def test_a_row_inserted_outside_the_writer_is_named(own_log):
    record_events([change(f"r{number}") for number in range(3)], own_log)
    with own_log.begin() as conn:
        conn.execute(text("INSERT INTO audit_events (at, event_type, action, outcome, prev_hash, row_hash) "
                          "VALUES (now(), 'alerts', 'forged', 'fired', :hash, :hash)"), {"hash": GENESIS})
    report = verify_chain(own_log)
    assert (report.broken.row_id, report.broken.kind) == (ids_of(own_log)[-1], "outside_chain")


# --- retention ---


def test_retention_deletes_a_prefix_and_the_chain_still_verifies(own_log):
    now = datetime.now(UTC)
    record_events([change("old-1", at=now - timedelta(days=100)), change("old-2", at=now - timedelta(days=95)),
                   change("recent", at=now - timedelta(days=1)),
                   change("back-dated", at=now - timedelta(days=91))], own_log)  # old, but after a recent one
    first_ids = ids_of(own_log)
    assert purge_older_than(90, now=now, engine=own_log) == 2
    with own_log.connect() as conn:
        left = list(conn.scalars(text("SELECT resource FROM audit_events ORDER BY id")))
        purge = conn.execute(text("SELECT details FROM audit_events WHERE action = 'audit.purge'")).scalar_one()
        start = conn.execute(text("SELECT start_after_id, purged_rows FROM audit_chain")).one()
    assert left == ["recent", "back-dated", "audit_events"]  # the purge is recorded, last
    assert purge["deleted"] == 2 and purge["through_id"] == first_ids[1]
    assert tuple(start) == (first_ids[1], 2)
    report = verify_chain(own_log)
    assert report.ok and report.rows == 3 and report.start_after_id == first_ids[1], report.summary()
    assert purge_older_than(90, now=now, engine=own_log) == 0

    # A prefix deleted without moving the recorded start (the trigger allows the oldest rows to go) is found.
    with own_log.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": first_ids[2]})
    report = verify_chain(own_log)
    assert report.broken.kind == "start_missing" and report.broken.row_id == first_ids[3]


def test_retention_of_every_row_leaves_an_empty_verifiable_chain(own_log):
    now = datetime.now(UTC)
    record_events([change("old", at=now - timedelta(days=200))], own_log)
    assert purge_older_than(90, now=now, engine=own_log) == 1
    assert verify_chain(own_log).summary() == "OK: 1 rows, chain intact"  # the purge's own record


def test_the_database_refuses_a_delete_that_is_not_the_oldest_rows(own_log):
    record_events([change(f"r{number}") for number in range(3)], own_log)
    with pytest.raises(DBAPIError, match="only the oldest rows"), own_log.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": ids_of(own_log)[1]})
    assert verify_chain(own_log).ok


# --- migration 0009 ---


def test_migration_chains_existing_rows_and_sets_their_tenant(database_url):
    config = _alembic(database_url)
    command.upgrade(config, "0004")
    command.upgrade(config, "0007")
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO audit_events (at, event_type, action, actor_key_id, actor_role, resource, outcome, "
                "count, details) VALUES "
                "(now() - interval '2 minutes', 'model_access', 'predict.predict', 'k1', 'inference_user', 'm', "
                " 'success', 7, NULL),"
                "(now(), 'configuration_changes', 'key.create', 'k2', 'model_admin', 'k3', 'success', 1, "
                " '{\"traffic\": 12.0, \"big\": 1e20}'),"
                "(now(), 'security_violations', 'missing_api_key', NULL, NULL, 'GET /x', 'denied', 3, NULL)"))
        command.upgrade(config, "heads")
        with engine.connect() as conn:
            tenants = list(conn.execute(text("SELECT actor_key_id, tenant FROM audit_events ORDER BY id")))
        assert tenants == [("k1", "default"), ("k2", "default"), (None, None)]
        assert verify_chain(engine).summary() == "OK: 3 rows, chain intact"
        # Appends continue the migrated chain.
        record_events([change("after")], engine)
        assert verify_chain(engine).summary() == "OK: 4 rows, chain intact"

        # Two flushes' rows for one key, model and minute are summed back into one row on downgrade.
        minute = datetime.now(UTC).replace(second=0, microsecond=0)
        access = [AuditRecord("model_access", "predict.predict", "success", actor_key_id="k9", resource="m",
                              at=minute, count=count) for count in (2, 5)]
        record_events(access[:1], engine)
        record_events(access[1:], engine)
        command.downgrade(config, "0009-1")
        with engine.connect() as conn:
            counts = list(conn.scalars(text("SELECT count FROM audit_events WHERE actor_key_id = 'k9'")))
            index = conn.scalar(text("SELECT count(*) FROM pg_indexes WHERE indexname = 'uq_audit_events_model_access'"))
        assert (counts, index) == ([7], 1)
    finally:
        engine.dispose()
