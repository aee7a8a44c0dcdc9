"""An endpoint's own port: every server of the workspace also listens there, and a request on it means that
endpoint, so its scoring URL's path is exactly `/score` as Azure's is. Unique, so two endpoints never share one
(several endpoints may have none)."""

import sqlalchemy as sa
from alembic import op

revision = "0009_endpoint_ports"
down_revision = "0008_gateway_load"


def upgrade() -> None:
    op.add_column("endpoints", sa.Column("port", sa.BigInteger(), nullable=True))
    op.create_index("endpoints_port", "endpoints", ["port"], unique=True)
