"""Mirrored traffic, body limits and probes on endpoints and deployments."""

import sqlalchemy as sa
from alembic import op

revision = "0003_endpoint_features"
down_revision = "0002_compute_targets"


def upgrade() -> None:
    op.add_column("endpoints", sa.Column("mirror_traffic", sa.Text()))
    op.add_column("endpoints", sa.Column("max_body_bytes", sa.BigInteger()))
    op.add_column("deployments", sa.Column("liveness_probe", sa.Text()))
    op.add_column("deployments", sa.Column("readiness_probe", sa.Text()))
    op.add_column("deployments", sa.Column("updated_at", sa.String(40)))
