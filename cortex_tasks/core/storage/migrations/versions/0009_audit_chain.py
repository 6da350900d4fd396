"""the audit log becomes append-only and hash-chained; audit events carry the actor's tenant

Revision ID: 0009
Revises: 0008

- `audit_events` gains `tenant` (existing rows with an actor key get 'default': every key existing now
  belongs to the tenant 'default'), `prev_hash` and `row_hash` (core/audit/chain.py). Existing rows are
  chained here in id order.
- `audit_chain` (one row) holds the chain's head, which writers lock to append, and its start, which
  retention moves when it deletes the oldest rows.
- model_access rows are no longer counted up in place: each gateway flush inserts its own rows, so the
  unique index that the UPSERT needed goes.
- Triggers make the log append-only: UPDATE and TRUNCATE are refused, and DELETE is refused unless the
  rows deleted are the oldest ones (every row left has a higher id), which is what retention does.
  `audit_chain` refuses DELETE and TRUNCATE.

Downgrade drops the triggers, the chain and the new columns, and sums the model_access rows of one key,
model, action and minute back into one row so the unique index can return.
"""
import sqlalchemy as sa
from alembic import op

# The hash a row gets is the one `cortex audit verify` recomputes, so it comes from the same function.
from cortex_tasks.core.audit.chain import CHAIN_ID, GENESIS, HASHED_FIELDS, row_hash

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BACKFILL_ROWS = 5000

APPEND_ONLY = """
CREATE FUNCTION audit_events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Rows are only appended; retention deletes the oldest rows (cortex audit verify).';
END $$;

CREATE FUNCTION audit_events_check_prefix_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Only the oldest rows may go: after the delete, every row left comes after every row deleted.
    IF EXISTS (SELECT 1 FROM audit_events
               WHERE id < (SELECT max(id) FROM deleted_events)) THEN
        RAISE EXCEPTION 'audit_events is append-only: only the oldest rows may be deleted (retention)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_events_delete_prefix AFTER DELETE ON audit_events
    REFERENCING OLD TABLE AS deleted_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_check_prefix_delete();
CREATE TRIGGER audit_chain_kept BEFORE DELETE OR TRUNCATE ON audit_chain
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();
"""

DROP_APPEND_ONLY = """
DROP TRIGGER IF EXISTS audit_chain_kept ON audit_chain;
DROP TRIGGER IF EXISTS audit_events_delete_prefix ON audit_events;
DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events;
DROP TRIGGER IF EXISTS audit_events_no_update ON audit_events;
DROP FUNCTION IF EXISTS audit_events_check_prefix_delete();
DROP FUNCTION IF EXISTS audit_events_refuse_change();
"""


def _chain_existing_rows(conn: sa.Connection) -> tuple[int | None, str]:
    """Hash every row in id order, a page at a time; returns the head (last id and hash)."""
    columns = ", ".join(HASHED_FIELDS)
    page = sa.text(f"SELECT {columns} FROM audit_events WHERE id > :after ORDER BY id LIMIT {BACKFILL_ROWS}")  # nosec B608 - constant column names and an integer
    store = sa.text("UPDATE audit_events SET prev_hash = :prev_hash, row_hash = :row_hash WHERE id = :id")
    after, previous, head_id = 0, GENESIS, None
    while True:
        rows = conn.execute(page, {"after": after}).mappings().all()
        if not rows:
            return head_id, previous
        hashes = []
        for row in rows:
            digest = row_hash(row, previous)
            hashes.append({"id": row["id"], "prev_hash": previous, "row_hash": digest})
            previous = digest
        conn.execute(store, hashes)
        after = head_id = rows[-1]["id"]


def upgrade() -> None:
    op.add_column("audit_events", sa.Column("tenant", sa.String(64)))
    op.add_column("audit_events", sa.Column("prev_hash", sa.String(64)))
    op.add_column("audit_events", sa.Column("row_hash", sa.String(64)))
    op.execute("UPDATE audit_events SET tenant = 'default' WHERE actor_key_id IS NOT NULL")
    op.drop_index("uq_audit_events_model_access", "audit_events")
    op.create_table(
        "audit_chain",
        sa.Column("id", sa.SmallInteger, primary_key=True),
        sa.Column("head_id", sa.BigInteger),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.Column("start_after_id", sa.BigInteger),
        sa.Column("start_hash", sa.String(64), nullable=False),
        sa.Column("purged_rows", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("purged_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("id = 1", name="ck_audit_chain_one_row"),
    )
    conn = op.get_bind()
    # No writer can append while the existing rows are chained: ADD COLUMN holds the table's ACCESS
    # EXCLUSIVE lock until this migration commits.
    head_id, head_hash = _chain_existing_rows(conn)
    conn.execute(sa.text("INSERT INTO audit_chain (id, head_id, head_hash, start_hash) "
                         "VALUES (:id, :head_id, :head_hash, :start_hash)"),
                 {"id": CHAIN_ID, "head_id": head_id, "head_hash": head_hash, "start_hash": GENESIS})
    op.alter_column("audit_events", "prev_hash", nullable=False)
    op.alter_column("audit_events", "row_hash", nullable=False)
    op.execute(APPEND_ONLY)


def downgrade() -> None:
    op.execute(DROP_APPEND_ONLY)
    op.execute("""
        WITH groups AS (
            SELECT min(id) AS keep, actor_key_id, resource, action, at, sum(count) AS total
            FROM audit_events WHERE event_type = 'model_access'
            GROUP BY actor_key_id, resource, action, at HAVING count(*) > 1
        ), merged AS (
            UPDATE audit_events e SET count = g.total FROM groups g WHERE e.id = g.keep RETURNING e.id
        )
        DELETE FROM audit_events e USING groups g
        WHERE e.event_type = 'model_access' AND e.id <> g.keep AND e.at = g.at AND e.action = g.action
          AND e.actor_key_id IS NOT DISTINCT FROM g.actor_key_id AND e.resource IS NOT DISTINCT FROM g.resource
    """)
    op.drop_table("audit_chain")
    op.drop_column("audit_events", "row_hash")
    op.drop_column("audit_events", "prev_hash")
    op.drop_column("audit_events", "tenant")
    op.create_index("uq_audit_events_model_access", "audit_events", ["actor_key_id", "resource", "action", "at"],
                    unique=True, postgresql_where=sa.text("event_type = 'model_access'"))
