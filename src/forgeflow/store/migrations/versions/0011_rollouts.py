"""Rollouts: a deployment's traffic moved to it in steps while its live metrics (and a judge) hold, promoted at the
last step or rolled back to the split from before. One row per rollout holds its plan, the split it restores, its
current step and that step's window start (so a new leader resumes it), and every decision with its evidence.
`active_endpoint` is the endpoint's name while the rollout runs and NULL after, so the database itself refuses a
second running rollout on one endpoint (NULLs never clash in a unique index, on SQLite and on Postgres)."""

import sqlalchemy as sa
from alembic import op

revision = "0011_rollouts"
down_revision = "0010_deployment_adapters"


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("deployment", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("active_endpoint", sa.String(32), nullable=True, unique=True),
        sa.Column("rollout_spec", sa.Text(), nullable=False),
        sa.Column("previous_traffic", sa.Text(), nullable=False),
        sa.Column("applied_traffic", sa.Text(), nullable=True),
        sa.Column("step_index", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("step_started_at", sa.String(40), nullable=True),
        sa.Column("window_start", sa.Text(), nullable=True),
        sa.Column("reference_metrics", sa.Text(), nullable=True),
        sa.Column("history", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_by", sa.String(255), nullable=True),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("updated_at", sa.String(40), nullable=False),
        sa.Column("finished_at", sa.String(40), nullable=True),
    )
    op.create_index("rollouts_by_endpoint", "rollouts", ["endpoint", "created_at"])
