"""Ray cluster targets (address, node type, shared storage) and deployments placed on a target, with the resources
each instance asks for and the instance autoscaling settings."""

import sqlalchemy as sa
from alembic import op

revision = "0005_clusters"
down_revision = "0004_studio_sessions"


def upgrade() -> None:
    op.add_column("compute_targets", sa.Column("address", sa.Text()))
    op.add_column("compute_targets", sa.Column("size", sa.String(128)))
    op.add_column("compute_targets", sa.Column("storage", sa.Text()))
    op.add_column("deployments", sa.Column("compute", sa.String(64)))
    op.add_column("deployments", sa.Column("resources", sa.Text()))
    op.add_column("deployments", sa.Column("scale_settings", sa.Text()))
