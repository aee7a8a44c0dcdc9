"""The store's tests take `database_url` (tests/conftest.py) to run twice: on SQLite and on a fresh Postgres
database."""

from __future__ import annotations

import pytest
import sqlalchemy as sa


@pytest.fixture
def stored_text():
    """Every value of every table of a store as one string: what a copy of the database would show."""

    def read(store) -> str:
        out = []
        with store.engine.connect() as conn:
            for table in sa.inspect(conn).get_table_names():
                out += [repr(tuple(row)) for row in conn.execute(sa.text(f'SELECT * FROM "{table}"'))]
        return "\n".join(out)

    return read
