"""forgeflow's schema as Alembic revisions (`store/migrations/versions/`), brought up to date when a store opens.

The revisions run on SQLite and on Postgres. forgeflow keeps its own version table, so MLflow's `alembic_version`
can live in the same database. One process migrates at a time (a Postgres advisory lock held for the transaction,
a file lock beside a SQLite file), so servers starting together on one database do not race. A workspace made
before the schema moved to Alembic (its `schema_migrations` table names the steps it ran, with the same names as
the first revisions) is stamped at the last step it ran and then upgraded in place.

Opening an up-to-date store reads the version table with plain SQL and compares it with HEAD, taken from the
revision files' names, so most commands never import Alembic or load the revisions.
"""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import sqlalchemy as sa

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

VERSION_TABLE = "forgeflow_alembic_version"
LEGACY_TABLE = "schema_migrations"
SCRIPTS = Path(__file__).parent / "migrations"
# The advisory lock key migrations take on Postgres (any fixed 64-bit number; "forgeflow" in ASCII).
MIGRATION_LOCK = 0x666F72676566
# The newest revision: each revision's id is its file's name, and the names sort in the order they run
# (tests/store/test_store.py checks this is Alembic's head).
HEAD = max(p.stem for p in (SCRIPTS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))


def _config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    return config


def _script(config: Config) -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config)


def revisions(script: ScriptDirectory | None = None) -> list[str]:
    """Every revision, oldest first."""
    script = script or _script(_config())
    return [s.revision for s in reversed(list(script.walk_revisions()))]


def current_revision(engine: sa.Engine) -> str | None:
    """The revision the database is at (plain SQL: no Alembic); None for an empty or pre-Alembic one."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(VERSION_TABLE):
            return None
        return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def upgrade(engine: sa.Engine) -> list[str]:
    """Bring the schema to the newest revision; the revisions this call applied, oldest first."""
    if current_revision(engine) == HEAD:
        return []
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    config = _config()
    script = _script(config)
    order = revisions(script)
    with _one_migrator(engine) as conn:  # read again under the lock: another process may have migrated meanwhile
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
