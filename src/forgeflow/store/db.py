"""The control-plane store: SQLAlchemy Core over SQLite (default) or Postgres.

Schema changes are Alembic revisions (`store/migrations/versions/`, run by `store/migrate.py`) applied when the
store opens; a revision that has run is never edited, a change is a new revision after the last.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from typing import Any, Iterable

import sqlalchemy as sa

from forgeflow.errors import Conflict, InvalidInput
from forgeflow.store import migrate

# What a row of each table is called in "already exists" answers.
NOUNS = {"endpoints": "endpoint", "deployments": "deployment", "connections": "connection",
         "compute_targets": "compute target", "jobs": "job", "settings": "setting", "users": "user",
         "access_tokens": "token", "rollouts": "rollout"}
# SQLite and Postgres store integers in 64 bits; a larger value is a bad request, not a crash in the driver.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1

JSON_COLUMNS = {"hyperparameters", "progress", "metrics", "traffic", "request_settings", "configs",
                "mirror_traffic", "liveness_probe", "readiness_probe", "resources", "scale_settings",
                "detail", "allowed_users", "gateway_load", "adapters", "rollout_spec", "previous_traffic",
                "applied_traffic", "window_start", "reference_metrics", "history"}


def now(*, precise: bool = False) -> str:
    """UTC now in ISO 8601, to the second; `precise`: to the microsecond, for rows whose order by time must hold
    within a second."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds" if precise else "seconds")


class Store:
    """Thin row access over the control-plane tables; rows come back as plain dicts."""

    def __init__(self, url: str) -> None:
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:  # a restarted database server: reconnect (a SQLite file has no server to lose)
            kwargs["pool_pre_ping"] = True
        self.engine = sa.create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self._lock = threading.RLock()
        self._lengths: dict[str, dict[str, int]] = {}
        self.migrate()

    def migrate(self) -> list[str]:
        """Bring the schema up to date; the revisions applied."""
        return migrate.upgrade(self.engine)

    # -- generic row helpers -------------------------------------------------
    def insert(self, table: str, row: dict) -> None:
        """Add a row; a row with the same key (another request created it first) is a Conflict."""
        row = _encode(self._fits(table, row))
        cols = ", ".join(row)
        params = ", ".join(f":{k}" for k in row)
        try:
            with self._lock, self.engine.begin() as conn:
                conn.execute(sa.text(f"INSERT INTO {table} ({cols}) VALUES ({params})"), row)
        except sa.exc.IntegrityError as exc:
            if not _duplicate_key(exc):
                raise
            raise _exists(table, row) from None

    def update(self, table: str, where: dict, values: dict) -> int:
        """Set `values` on the rows matching `where`: a column equal to a value, or one of a tuple, set or frozenset
        of values (`column IN (...)`: one conditional write where a row may be in any of several states). A value
        a unique index refuses is a Conflict."""
        values = _encode(self._fits(table, values))
        params = {f"v_{k}": v for k, v in values.items()}
        conds = []
        for k, v in where.items():
            if isinstance(v, (tuple, set, frozenset)):
                v = [one for one in v if not _unmatchable([one])]
                if not v:
                    return 0
                names = [f"w_{k}_{i}" for i in range(len(v))]
                conds.append(f"{k} IN ({', '.join(':' + n for n in names)})")
                params |= dict(zip(names, v))
            elif _unmatchable([v]):
                return 0
            else:
                conds.append(f"{k} = :w_{k}")
                params[f"w_{k}"] = v
        sets = ", ".join(f"{k} = :v_{k}" for k in values)
        cond = " AND ".join(conds)
        try:
            with self._lock, self.engine.begin() as conn:
                return conn.execute(sa.text(f"UPDATE {table} SET {sets} WHERE {cond}"), params).rowcount
        except sa.exc.IntegrityError as exc:
            if not _duplicate_key(exc):
                raise
            noun = NOUNS.get(table, table.rstrip("s").replace("_", " "))
            raise Conflict(f"another {noun} already has a value this change gives (one that must be unique): "
                           "read it again and pick another") from None

    def delete(self, table: str, where: dict) -> int:
        if _unmatchable(where.values()):
            return 0
        cond = " AND ".join(f"{k} = :{k}" for k in where)
        with self._lock, self.engine.begin() as conn:
            return conn.execute(sa.text(f"DELETE FROM {table} WHERE {cond}"), where).rowcount

    def select(self, table: str, where: dict | None = None, order_by: str | None = None) -> list[dict]:
        sql = f"SELECT * FROM {table}"
        where = where or {}
        if _unmatchable(where.values()):
            return []
        if where:
            sql += " WHERE " + " AND ".join(f"{k} = :{k}" for k in where)
        if order_by:
            sql += f" ORDER BY {order_by}"
        with self.engine.connect() as conn:
            return [_decode(dict(r._mapping)) for r in conn.execute(sa.text(sql), where)]

    def execute(self, sql: str, params: dict | None = None) -> int:
        """A write the row helpers cannot express (a range delete), for the module that owns the table; rows touched."""
        _storable(params)
        with self._lock, self.engine.begin() as conn:
            return conn.execute(sa.text(sql), params or {}).rowcount

    def get(self, table: str, **where: Any) -> dict | None:
        rows = self.select(table, where)
        return rows[0] if rows else None

    def select_in(self, table: str, column: str, values: Iterable[str]) -> list[dict]:
        values = [v for v in values if not _unmatchable([v])]
        if not values:
            return []
        names = [f"p{i}" for i in range(len(values))]
        sql = f"SELECT * FROM {table} WHERE {column} IN ({', '.join(':' + n for n in names)})"
        with self.engine.connect() as conn:
            return [_decode(dict(r._mapping)) for r in conn.execute(sa.text(sql), dict(zip(names, values)))]

    def query(self, sql: str, params: dict | None = None) -> list[dict]:
        """A read the row helpers cannot express (a range, a limit), for the module that owns the table."""
        _storable(params)
        with self.engine.connect() as conn:
            return [_decode(dict(r._mapping)) for r in conn.execute(sa.text(sql), params or {})]

    def _fits(self, table: str, row: dict) -> dict:
        """Refuse, naming the column, a string Postgres would refuse (longer than its VARCHAR, or holding a NUL
        character), so a value is a 400 on both databases and never a driver error; SQLite alone would take it."""
        if table not in self._lengths:
            with self.engine.connect() as conn:
                self._lengths[table] = {c["name"]: c["type"].length for c in sa.inspect(conn).get_columns(table)
                                        if isinstance(c["type"], sa.String) and c["type"].length}
        for k, v in row.items():
            if not isinstance(v, str):
                continue
            if len(v) > self._lengths[table].get(k, len(v)):
                raise InvalidInput(f"{k}: at most {self._lengths[table][k]} characters (got {len(v)})", field=k)
            if "\x00" in v:
                raise InvalidInput(f"{k}: the NUL character (\\x00) cannot be stored", field=k)
        return row

    # -- settings ------------------------------------------------------------
    def get_setting(self, key: str) -> str | None:
        row = self.get("settings", key=key)
        return row["value"] if row else None

    def set_setting(self, key: str, value: str) -> None:
        with self._lock:
            if self.get_setting(key) is None:
                try:
                    self.insert("settings", {"key": key, "value": value})
                    return
                except Conflict:  # another process wrote it first: this value wins, as an update would
                    pass
            self.update("settings", {"key": key}, {"value": value})


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _unmatchable(values: Iterable[Any]) -> bool:
    """Whether an equality condition on these values matches no row: a string holding a NUL character cannot be
    stored (see Store._fits), and Postgres' driver refuses to send one at all, so the lookup is answered here."""
    return any(isinstance(v, str) and "\x00" in v for v in values)


def _storable(params: dict | None) -> None:
    """Refuse, naming it, a parameter of a hand-written statement that holds a NUL character: what such a statement
    means for a value no row can hold (a range, an inequality) is not this module's to guess, and Postgres' driver
    would fail on it."""
    for k, v in (params or {}).items():
        if isinstance(v, str) and "\x00" in v:
            raise InvalidInput(f"{k}: the NUL character (\\x00) is not allowed", field=k)


def _encode(row: dict) -> dict:
    for k, v in row.items():
        if isinstance(v, int) and not INT_MIN <= v <= INT_MAX:
            raise InvalidInput(f"{k}: {v} is out of range ({INT_MIN} to {INT_MAX})", field=k)
    return {k: json.dumps(v) if k in JSON_COLUMNS and v is not None else v for k, v in row.items()}


def _duplicate_key(exc: sa.exc.IntegrityError) -> bool:
    """A unique or primary key violation (not a NOT NULL or foreign key one), in SQLite's or Postgres' words."""
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code == "23505" or "UNIQUE constraint failed" in str(orig)


def _exists(table: str, row: dict) -> Conflict:
    noun = NOUNS.get(table, table.rstrip("s").replace("_", " "))
    name = row.get("name", row.get("id", row.get("key")))
    where = f" on endpoint {row['endpoint']!r}" if table == "deployments" and "endpoint" in row else ""
    return Conflict(f"{noun} {name!r} already exists{where}", field="name" if "name" in row else None)


def _decode(row: dict) -> dict:
    return {k: json.loads(v) if k in JSON_COLUMNS and isinstance(v, str) else v for k, v in row.items()}
