"""Where every piece of state lives: one home directory, overridable by FORGEFLOW_HOME, and what `forgeflow init`
chose beside it (store/config.py): a database, an MLflow store, an artifacts root every server reaches."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from forgeflow.store.config import (CONFIG_FILE, DATABASE_URL_ENV, MLFLOW_SCHEMA, POSTGRES, WorkspaceConfig,
                                    check_database_url, load)

DEFAULT_URL = "http://127.0.0.1:8765"


def home_dir() -> Path:
    return Path(os.environ.get("FORGEFLOW_HOME") or Path.home() / ".forgeflow").expanduser().resolve()


def server_url() -> str:
    return (os.environ.get("FORGEFLOW_URL") or DEFAULT_URL).rstrip("/")


@dataclass(frozen=True)
class Paths:
    """The layout of a workspace home."""

    root: Path

    @classmethod
    def current(cls) -> "Paths":
        return cls(home_dir())

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_FILE

    @cached_property
    def config(self) -> WorkspaceConfig:
        """The choices saved by `forgeflow init` (read once per Paths; a server reads them when it starts)."""
        from forgeflow.store.secrets import SecretBox  # cryptography: only where a saved password is read

        return load(self.config_file, lambda token: SecretBox(self.secret_key).decrypt(token))

    @property
    def db(self) -> Path:
        """The embedded store's file (the default database)."""
        return self.root / "forgeflow.db"

    @property
    def db_url(self) -> str:
        """The store: FORGEFLOW_DATABASE_URL, else the URL chosen at init, else SQLite in the home."""
        env = os.environ.get(DATABASE_URL_ENV)
        if env:
            return check_database_url(env)
        return self.config.database_url or f"sqlite:///{self.db}"

    @property
    def mlflow_db(self) -> Path:
        """MLflow's SQLite file beside a SQLite store."""
        url = self.db_url
        beside = Path(url.removeprefix("sqlite:///")).parent if url.startswith("sqlite:///") else self.root
        return beside / "mlflow.db"

    @property
    def mlflow_uri(self) -> str:
        """MLflow tracking and registry: the URI chosen at init, else the store's own database (its own schema on
        Postgres, so MLflow's tables never meet forgeflow's), else mlflow.db beside a SQLite store. It may hold a
        password: hand it to other processes through `config.password_env`, never in a file."""
        if self.config.mlflow_uri:
            return self.config.mlflow_uri
        url = self.db_url
        return in_schema(url, MLFLOW_SCHEMA) if url.startswith(POSTGRES) else f"sqlite:///{self.mlflow_db}"

    @property
    def mlflow_artifacts(self) -> str:
        """Where MLflow keeps the artifacts of a new experiment: chosen at init, else mlruns under the artifacts."""
        return self.config.mlflow_artifacts or str(self.mlruns)

    @property
    def secret_key(self) -> Path:
        return self.root / "secret.key"

    @property
    def artifacts(self) -> Path:
        """Base models, job folders and MLflow's files: under the artifacts root chosen at init (a directory every
        server reaches), else in the home."""
        return Path(self.config.artifacts_root) if self.config.artifacts_root else self.root / "artifacts"

    @property
    def base_models(self) -> Path:
        return self.artifacts / "base-models"

    @property
    def jobs(self) -> Path:
        return self.artifacts / "jobs"

    @property
    def datasets(self) -> Path:
        return self._shared("datasets")

    @property
    def flows(self) -> Path:
        return self._shared("flows")

    def _shared(self, name: str) -> Path:
        """A folder every server must see: under the artifacts root when one was chosen, else in the home."""
        return Path(self.config.artifacts_root) / name if self.config.artifacts_root else self.root / name

    @property
    def mlruns(self) -> Path:
        return self.artifacts / "mlruns"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def server_pid(self) -> Path:
        return self.root / "server.pid"

    @property
    def server_log(self) -> Path:
        return self.logs / "server.log"


def in_schema(url: str, schema: str) -> str:
    """A Postgres URL whose connections work in `schema` (libpq's `options`; MLflow's SQLAlchemy store and its
    Alembic migrations use the connection as it comes, so every MLflow table lands there)."""
    import sqlalchemy as sa

    parsed = sa.engine.make_url(url)
    options = " ".join(filter(None, [f"-csearch_path={schema}", parsed.query.get("options")]))
    return parsed.update_query_dict({"options": options}).render_as_string(hide_password=False)
