"""forgeflow's schema as Alembic revisions (`store/migrations/versions/`), brought up to date when a store opens.

The revisions run on SQLite and on Postgres. forgeflow keeps its own version table, so MLflow's `alembic_version`
can live in the same database. One process migrates at a time (a Postgres advisory lock held for the transaction,
a file lock beside a SQLite file), so servers starting together on one database do not race. A workspace made
before the schema moved to Alembic (its `schema_migrations` table names the steps it ran, with the same names as
the first revisions) is stamped at the last step it ran and then upgraded in place.
"""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

VERSION_TABLE = "forgeflow_alembic_version"
LEGACY_TABLE = "schema_migrations"
SCRIPTS = Path(__file__).parent / "migrations"
# The advisory lock key migrations take on Postgres (any fixed 64-bit number; "forgeflow" in ASCII).
MIGRATION_LOCK = 0x666F72676566


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    return config


def revisions() -> list[str]:
    """Every revision, oldest first."""
    script = ScriptDirectory.from_config(_config())
    return [s.revision for s in reversed(list(script.walk_revisions()))]


def current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def upgrade(engine: sa.Engine) -> list[str]:
    """Bring the schema to the newest revision; the revisions this call applied, oldest first."""
    config = _config()
    script = ScriptDirectory.from_config(config)
    order = [s.revision for s in reversed(list(script.walk_revisions()))]
    with _one_migrator(engine) as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        current = context.get_current_revision() or _adopt_legacy(conn, context, script, order)
        pending = order[order.index(current) + 1:] if current else order
        if pending:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    return pending


def _adopt_legacy(conn: sa.Connection, context: MigrationContext, script: ScriptDirectory,
                  order: list[str]) -> str | None:
    """Stamp a workspace made before Alembic at the last step its own migration table names; None if it has none."""
    if not sa.inspect(conn).has_table(LEGACY_TABLE):
        return None
    done = {row[0] for row in conn.execute(sa.text(f"SELECT name FROM {LEGACY_TABLE}"))}
    ran = [name for name in order if name in done]
    if ran:
        context.stamp(script, ran[-1])
    conn.execute(sa.text(f"DROP TABLE {LEGACY_TABLE}"))
    return ran[-1] if ran else None


@contextmanager
def _one_migrator(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A transaction that no other process migrating the same database runs beside."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
            yield conn
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        with engine.begin() as conn:
            yield conn
        return
    lock_path = Path(database).with_name(Path(database).name + ".migrate-lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with engine.begin() as conn:
                yield conn
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
