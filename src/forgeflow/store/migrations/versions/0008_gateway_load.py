"""Several servers on one database, continued: each server publishes the load its gateway has (per deployment:
requests pending and when the last one came; per instance: requests in flight) on its `servers` row, so the
leader's autoscaler and drains count the requests that came through other servers; and each published instance
names the host it runs on, so a server on another host does not forward to its own loopback."""

import sqlalchemy as sa
from alembic import op

revision = "0008_gateway_load"
down_revision = "0007_servers"


def upgrade() -> None:
    op.add_column("servers", sa.Column("gateway_load", sa.Text(), nullable=True))
    op.add_column("deployment_instances", sa.Column("host", sa.String(255), nullable=True))
