"""Several servers on one database: each server's row (who it is, where it answers, when it last said it lives,
whether it leads), and the instances the leader runs, published so that every server's gateway can reach them
(each with its secret, encrypted with the workspace key)."""

import sqlalchemy as sa
from alembic import op

revision = "0007_servers"
down_revision = "0006_team"


def upgrade() -> None:
    op.create_table(
        "servers",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("started_at", sa.String(40), nullable=False),
        sa.Column("heartbeat_at", sa.String(40), nullable=False),
        sa.Column("is_leader", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_table(
        "deployment_instances",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("deployment", sa.String(32), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("ready", sa.Integer(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.Column("server_id", sa.String(32), nullable=False),
        sa.Column("updated_at", sa.String(40), nullable=False),
    )
    op.create_index("deployment_instances_by_deployment", "deployment_instances", ["endpoint", "deployment"])
