"""Where every piece of state lives: one home directory, overridable by FORGEFLOW_HOME."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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
    def db(self) -> Path:
        return self.root / "forgeflow.db"

    @property
    def db_url(self) -> str:
        return os.environ.get("FORGEFLOW_DB_URL") or f"sqlite:///{self.db}"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"

    @property
    def secret_key(self) -> Path:
        return self.root / "secret.key"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def base_models(self) -> Path:
        return self.artifacts / "base-models"

    @property
    def jobs(self) -> Path:
        return self.artifacts / "jobs"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def flows(self) -> Path:
        return self.root / "flows"

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
