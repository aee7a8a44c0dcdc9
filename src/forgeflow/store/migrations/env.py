"""Alembic's entry point for forgeflow's schema: always run on a connection `store.migrate` hands over, never from an
ini file, with forgeflow's own version table so that MLflow's `alembic_version` can live in the same database."""

from alembic import context

from forgeflow.store.migrate import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=VERSION_TABLE, transaction_per_migration=False)
with context.begin_transaction():
    context.run_migrations()
