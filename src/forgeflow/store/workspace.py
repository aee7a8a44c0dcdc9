"""Opening (and creating) a workspace: home folders, the store, secrets, the owner token (the admin token made at
init: the credential of the workspace owner, store/identity.py), users and their tokens, the audit log and Studio
sessions."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from functools import cached_property

import sqlalchemy as sa

from forgeflow.errors import ServerUnavailable
from forgeflow.store import config, migrate
from forgeflow.store.audit import AuditLog
from forgeflow.store.db import Store
from forgeflow.store.home import Paths
from forgeflow.store.identity import Identity
from forgeflow.store.secrets import SecretBox, new_key, write_private
from forgeflow.store.sessions import Sessions

ADMIN_TOKEN_SETTING = "admin_token"


@dataclass
class Workspace:
    paths: Paths

    @classmethod
    def open(cls, paths: Paths | None = None) -> "Workspace":
        """Open the workspace at FORGEFLOW_HOME, creating it on first use."""
        ws = cls(paths or Paths.current())
        ws.ensure()
        return ws

    def ensure(self) -> bool:
        """Create whatever is missing; returns True when the workspace was new (it had no admin token yet)."""
        for d in (self.paths.root, self.paths.artifacts, self.paths.base_models, self.paths.jobs, self.paths.mlruns, self.paths.logs):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.paths.root, 0o700)
        created = self.store.get_setting(ADMIN_TOKEN_SETTING) is None
        if created:
            self.store.set_setting(ADMIN_TOKEN_SETTING, self.secrets.encrypt(new_key("ffa_")))
        self.identity.ensure_owner()
        return created

    def configure(self, **choices: str | None) -> None:
        """Save the choices of `forgeflow init` (database_url, mlflow_uri, artifacts_root, mlflow_artifacts) over
        the saved ones, each validated; the file is mode 600 and its passwords are encrypted."""
        checks = {"database_url": config.check_database_url, "mlflow_uri": config.check_mlflow_uri,
                  "artifacts_root": config.check_artifacts_root, "mlflow_artifacts": config.check_mlflow_artifacts}
        values = {k: checks[k](v) for k, v in choices.items() if v is not None}
        if not values:
            return
        self.paths.root.mkdir(parents=True, exist_ok=True)
        new_store = _open_store(values["database_url"]) if "database_url" in values else None
        try:  # a database that cannot be reached is not saved: the workspace keeps the one it had
            merged = dataclasses.replace(self.paths.config, **values)
            write_private(self.paths.config_file, config.dump(merged, self.secrets.encrypt))
        finally:
            if new_store is not None:
                new_store.engine.dispose()
        self.paths = Paths(self.paths.root)
        self.__dict__.pop("store", None)

    def describe(self) -> dict:
        """Where this workspace keeps its state, passwords masked: for `init` and /api/workspace (owners)."""
        return {"home": str(self.paths.root), "database_url": config.mask(self.paths.db_url),
                "mlflow_tracking_uri": config.mask(self.paths.mlflow_uri), "artifacts_root": str(self.paths.artifacts),
                "mlflow_artifacts": config.mask(self.paths.mlflow_artifacts)}

    @cached_property
    def store(self) -> Store:
        return _open_store(self.paths.db_url)

    def ensure_mlflow(self) -> None:
        """MLflow's tables, made now (see ensure_mlflow_tables): at init and when a server starts."""
        ensure_mlflow_tables(self.paths.mlflow_uri)

    @cached_property
    def secrets(self) -> SecretBox:
        return SecretBox(self.paths.secret_key)

    @cached_property
    def sessions(self) -> Sessions:
        return Sessions(self.store)

    @cached_property
    def identity(self) -> Identity:
        return Identity(self.store)

    @cached_property
    def audit(self) -> AuditLog:
        return AuditLog(self.store)

    def admin_token(self) -> str:
        return self.secrets.decrypt(self.store.get_setting(ADMIN_TOKEN_SETTING) or "")

    def rotate_admin_token(self) -> dict:
        """A new owner token: the old one and every Studio session signed in with it stop working at once (in every
        server process: they read the token and the sessions from the store on each request). Personal access
        tokens and their sessions are not touched."""
        token = new_key("ffa_")
        self.store.set_setting(ADMIN_TOKEN_SETTING, self.secrets.encrypt(token))
        return {"token": token, "sessions_ended": self.sessions.end_owner_sessions()}


def _open_store(url: str) -> Store:
    """The store at `url` (schema brought up to date), or a 503 naming database_url without its password."""
    try:
        return Store(url)
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        reason = (str(exc.orig or exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ServerUnavailable(
            f"database_url: the store at {config.mask(url)} cannot be reached ({reason}); start the database or "
            f"choose another with FORGEFLOW_DATABASE_URL or forgeflow init --database-url URL",
            field="database_url") from None


def ensure_mlflow_tables(uri: str) -> None:
    """MLflow on the store's Postgres database lives in a schema of its own: the schema and MLflow's tables are
    created here, once, under forgeflow's migration lock. MLflow creates them on first use otherwise, and
    processes that first use it together (servers, workers) race through its migrations and fail. Called before
    the first use of MLflow in a process (init, a server's start, the job runner, the registry's client), not
    on every open of the workspace. (An MLflow database chosen at init is MLflow's own business.)"""
    if not uri.startswith(config.POSTGRES):
        return
    url = sa.engine.make_url(uri)
    if f"search_path={config.MLFLOW_SCHEMA}" not in str(url.query.get("options", "")):
        return
    engine = sa.create_engine(url)
    try:
        if not _has_mlflow_tables(engine):
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": migrate.MIGRATION_LOCK})
                try:
                    conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {config.MLFLOW_SCHEMA}"))
                    conn.commit()
                    if not _has_mlflow_tables(engine):
                        from mlflow import MlflowClient  # slow to import: only when its tables are missing

                        MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1)
                finally:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": migrate.MIGRATION_LOCK})
                    conn.commit()
    finally:
        engine.dispose()


def _has_mlflow_tables(engine: sa.Engine) -> bool:
    """MLflow's tables are there (its version table and its newest ones) where its search_path points."""
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        return all(inspector.has_table(t) for t in ("alembic_version", "experiments", "registered_models"))
