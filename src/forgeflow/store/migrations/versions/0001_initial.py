"""The first tables: settings, jobs, endpoints, deployments, connections."""

from alembic import op

revision = "0001_initial"
down_revision = None

STATEMENTS = [
    """CREATE TABLE settings (key VARCHAR(64) PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE jobs (
        id VARCHAR(64) PRIMARY KEY, name VARCHAR(128) NOT NULL, type VARCHAR(32) NOT NULL,
        status VARCHAR(32) NOT NULL, compute VARCHAR(64) NOT NULL,
        base_model VARCHAR(256) NOT NULL, base_model_path TEXT NOT NULL,
        training_data TEXT NOT NULL, validation_data TEXT,
        hyperparameters TEXT NOT NULL, job_dir TEXT NOT NULL,
        pid BIGINT, error TEXT, mlflow_run_id VARCHAR(64), progress TEXT, metrics TEXT,
        created_at VARCHAR(40) NOT NULL, started_at VARCHAR(40), finished_at VARCHAR(40))""",
    """CREATE TABLE endpoints (
        name VARCHAR(32) PRIMARY KEY, auth_mode VARCHAR(16) NOT NULL,
        primary_key TEXT NOT NULL, secondary_key TEXT NOT NULL,
        traffic TEXT NOT NULL, description TEXT, created_at VARCHAR(40) NOT NULL)""",
    """CREATE TABLE deployments (
        endpoint VARCHAR(32) NOT NULL, name VARCHAR(32) NOT NULL,
        model_ref VARCHAR(256) NOT NULL, model_path TEXT NOT NULL, runtime VARCHAR(32) NOT NULL,
        instance_count BIGINT NOT NULL, request_settings TEXT NOT NULL,
        state VARCHAR(32) NOT NULL, error TEXT, created_at VARCHAR(40) NOT NULL,
        PRIMARY KEY (endpoint, name))""",
    """CREATE TABLE connections (
        name VARCHAR(128) PRIMARY KEY, type VARCHAR(32) NOT NULL, configs TEXT NOT NULL,
        secrets TEXT NOT NULL, created_at VARCHAR(40) NOT NULL, updated_at VARCHAR(40) NOT NULL)""",
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)
