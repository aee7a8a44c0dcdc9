"""Studio sign-ins live server-side so that signing out or rotating the owner token ends them at once; only a hash
of each session id is kept, so a copy of the database signs nobody in."""

from alembic import op

revision = "0004_studio_sessions"
down_revision = "0003_endpoint_features"


def upgrade() -> None:
    op.execute("""CREATE TABLE studio_sessions (
        id_hash VARCHAR(64) PRIMARY KEY, token_tag VARCHAR(64) NOT NULL, created_at VARCHAR(40) NOT NULL,
        expires_at BIGINT NOT NULL)""")
