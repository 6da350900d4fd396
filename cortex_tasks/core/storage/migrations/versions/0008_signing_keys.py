"""signing keys of Cortex's access tokens (POST /oauth/token)

Revision ID: 0008_signing_keys
Revises: 0004

A branch of its own from 0004 (where api_keys got its last column), so that it merges with the other
features' migrations by a merge revision instead of a renumbering.
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008_signing_keys"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "token_signing_keys",
        sa.Column("kid", sa.String(64), primary_key=True),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("private_pem", sa.Text, nullable=False),
        sa.Column("public_jwk", JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("retired_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("token_signing_keys")
