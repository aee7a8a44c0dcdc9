"""A workspace for a team: users with a role, personal access tokens (only a hash of each kept), the audit log of
every change, the token a Studio session was signed in with, and endpoints restricted to a set of users."""

import sqlalchemy as sa
from alembic import op

revision = "0006_team"
down_revision = "0005_clusters"


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("created_by", sa.String(64)),
    )
    op.create_table(
        "access_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_name", sa.String(64), nullable=False, index=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("description", sa.Text()),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("created_by", sa.String(64)),
        sa.Column("expires_at", sa.BigInteger()),  # unix seconds; NULL: never
        sa.Column("revoked_at", sa.String(40)),
    )
    op.create_table(
        "audit_log",
        # SQLite's rowid needs the name INTEGER; BIGINT on Postgres like every other integer column
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("at", sa.String(40), nullable=False, index=True),
        sa.Column("user_name", sa.String(64)),
        sa.Column("role", sa.String(16)),
        sa.Column("action", sa.String(160), nullable=False),
        sa.Column("target", sa.Text()),
        sa.Column("status", sa.BigInteger()),
        sa.Column("client", sa.String(128)),
        sa.Column("detail", sa.Text()),
    )
    op.add_column("studio_sessions", sa.Column("token_id", sa.String(32)))
    op.add_column("endpoints", sa.Column("allowed_users", sa.Text()))
