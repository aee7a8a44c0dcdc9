"""Named compute targets with their job concurrency and node limits."""

from alembic import op

revision = "0002_compute_targets"
down_revision = "0001_initial"


def upgrade() -> None:
    op.execute("""CREATE TABLE compute_targets (
        name VARCHAR(64) PRIMARY KEY, type VARCHAR(16) NOT NULL, max_concurrent_jobs BIGINT NOT NULL,
        min_nodes BIGINT NOT NULL, max_nodes BIGINT NOT NULL, idle_time_before_scale_down BIGINT NOT NULL,
        description TEXT, created_at VARCHAR(40) NOT NULL)""")
