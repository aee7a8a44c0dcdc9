"""Which of the servers on one database leads. Every server answers the REST API and the gateway; only the leader
runs the job runner's loop and the deployment supervisor, because two of them would start the same job twice and
two pools of instances for one deployment.

Leading is holding a lock that dies with its holder: on Postgres a session-level advisory lock held on a
connection of its own (the database ends the session, and so the lock, when the leader's process dies); on
SQLite, where every server is on the database's machine, an `flock` on a file beside the database (the kernel
drops it when the process dies). A server that does not lead tries to take the lock every `poll_s`, so a leader
killed is followed within about that long; the leader checks its lock as often.

A leader whose lock is gone (its connection was cut: the database restarted, or ended the session) may already
have a successor, so it must stop acting at once: `on_lost` is called, and the server exits (see api/app.py).

The `servers` table (this module is its one writer) says who runs: each server's row is written when it starts,
its heartbeat every poll, and removed when it stops; the leader marks itself and clears rows whose heartbeat
stopped long ago (a server that was killed). With its heartbeat each server writes its gateway's load (`load`,
JSON), which the leader reads with `gateway_loads`: requests through followers count for its autoscaler too, and
its rollouts read every server's answer counts with `live_loads`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from forgeflow.store.db import Store, now

log = logging.getLogger("forgeflow.server")

TABLE = "servers"
# The advisory lock key of the leader (any fixed 64-bit number: "forgeldr" in ASCII, apart from migrate.py's).
LEADER_LOCK = 0x666F7267656C6472
POLL_S = 1.0
STALE_S = 30.0  # a heartbeat this old belongs to a server that is gone: its row is deleted
# A server is alive while its heartbeat is younger than about three polls (plus the second its timestamp drops).
ALIVE_S = 3 * POLL_S + 1.0


class Lock(Protocol):
    """A lock that ends with the process (or the database session) holding it."""

    def acquire(self) -> bool:
        """Take it if nobody holds it; whether this holder now has it."""

    def held(self) -> bool:
        """Still ours: False once what held it (a database session) is gone."""

    def release(self) -> None:
        """Let it go (and whatever held it)."""


class FileLock:
    """An exclusive `flock` on a file: for servers on one machine (one SQLite file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def held(self) -> bool:
        return self._fd is not None  # the kernel keeps it as long as the descriptor is open

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing drops the lock


class AdvisoryLock:
    """A Postgres session-level advisory lock, on a connection of its own that lives as long as the lock."""

    def __init__(self, url: sa.URL, key: int = LEADER_LOCK) -> None:
        # Keepalives bound how long a cut network goes unnoticed; the lock's session is never in a transaction.
        self._engine = sa.create_engine(url, poolclass=NullPool, connect_args={
            "connect_timeout": 5, "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 1,
            "keepalives_count": 3, "tcp_user_timeout": 10_000,
            # The server side too: a leader whose machine died (no FIN, no RST) loses its session, and so the lock,
            # within seconds rather than after the system's two-hour TCP keepalive.
            "options": "-c statement_timeout=5000 -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=1 "
                       "-c tcp_keepalives_count=3"})
        self.key = key
        self._conn: sa.Connection | None = None

    def acquire(self) -> bool:
        if self._conn is not None:
            return self.held()
        try:
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except sa.exc.OperationalError as exc:
            log.warning("cannot reach the database to contend for leadership: %s", exc.orig)
            return False
        try:
            won = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar()
        except sa.exc.DBAPIError:
            conn.close()
            return False
        if won:
            self._conn = conn
        else:
            conn.close()
        return bool(won)

    def held(self) -> bool:
        if self._conn is None:
            return False
        try:
            self._conn.execute(sa.text("SELECT 1"))  # the lock lives exactly as long as this session
            return True
        except sa.exc.DBAPIError:
            self.release()
            return False

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()  # ending the session releases its locks
            except sa.exc.DBAPIError:
                pass
        self._engine.dispose()


def leader_lock(store: Store) -> Lock:
    """The leader's lock for the store's database."""
    url = store.engine.url
    if url.get_backend_name() == "postgresql":
        return AdvisoryLock(url)
    database = url.database
    if not database or database == ":memory:":
        raise ValueError("an in-memory database has one server: it needs no leader lock")
    return FileLock(Path(database).with_name(Path(database).name + ".leader-lock"))


class Leadership:
    """This server's place among the servers of one database: it leads while it holds `lock`."""

    def __init__(self, store: Store, lock: Lock, *, url: str, on_elected: Callable[[], None],
                 on_lost: Callable[[], None], poll_s: float = POLL_S,
                 load: Callable[[], dict] | None = None) -> None:
        self.store = store
        self.load = load
        self.lock = lock
        self.url = url
        self.on_elected = on_elected
        self.on_lost = on_lost
        self.poll_s = poll_s
        self.server_id = uuid.uuid4().hex[:16]
        self._leads = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def leads(self) -> bool:
        return self._leads

    def start(self) -> None:
        """Register this server and contend once at once (a lone server leads before it answers), then every
        poll_s in the background."""
        self._register(heartbeat_at=now(), is_leader=0)
        self._contend()
        self._thread = threading.Thread(target=self._run, name="forgeflow-leadership", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop contending and let the lock go; call it after what the leader runs has stopped."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        self._leads = False
        self.lock.release()
        try:
            self.store.delete(TABLE, {"id": self.server_id})
        except sa.exc.SQLAlchemyError as exc:  # the database is gone: the next leader clears the row
            log.warning("could not remove this server's row: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                if self._leads:
                    if not self.lock.held():
                        log.critical("this server lost its leader lock (its database session ended)")
                        self._lose()
                        return
                else:
                    self._contend()
                self._heartbeat()
            except Exception:  # a busy or unreachable database: try again next poll
                log.exception("leadership poll failed")

    def _contend(self) -> None:
        """Take the lock if free; this server leads only once its row says so and what it leads has started. A
        write that fails (the database restarted under a pooled connection) lets the lock go again, so the lock
        is never held by a server that runs nothing: the next poll tries again."""
        if self._stop.is_set() or not self.lock.acquire():
            return
        try:
            self.store.execute(f"UPDATE {TABLE} SET is_leader = 0 WHERE id <> :me", {"me": self.server_id})
            self.store.update(TABLE, {"id": self.server_id}, {"is_leader": 1, "heartbeat_at": now()})
        except Exception:
            self.lock.release()
            raise
        log.info("this server (%s, %s) leads: it runs the job runner and the deployment supervisor",
                 self.server_id, self.url)
        try:
            self.on_elected()
        except Exception:
            if self._thread is None:  # at start: the server does not start
                self.lock.release()
                raise
            # A leader that cannot run what it leads would hold the lock for nothing: it stops as if it lost it.
            log.exception("this server won leadership but could not start the job runner and the supervisor")
            self._lose()
            self.lock.release()
            return
        self._leads = True

    def _lose(self) -> None:
        """Leadership is over for this server: it contends no more (a server that lost its lock exits)."""
        self._leads = False
        self._stop.set()
        self.on_lost()

    def _register(self, **values: Any) -> None:
        """This server's row, started now with `values` (its heartbeat and leader flag, maybe its load)."""
        self.store.insert(TABLE, {"id": self.server_id, "url": self.url, "pid": os.getpid(),
                                  "host": socket.gethostname(), "started_at": values["heartbeat_at"], **values})

    def _heartbeat(self) -> None:
        values = {"heartbeat_at": now(), "is_leader": int(self._leads)}
        if self.load is not None:
            values["gateway_load"] = self.load()
        if not self.store.update(TABLE, {"id": self.server_id}, values):  # removed as stale after a long pause
            self._register(**values)
        if self._leads:
            cutoff = datetime.fromtimestamp(datetime.now(timezone.utc).timestamp() - STALE_S, timezone.utc)
            self.store.execute(f"DELETE FROM {TABLE} WHERE heartbeat_at < :t",
                               {"t": cutoff.isoformat(timespec="seconds")})

def servers(store: Store) -> list[dict]:
    """Every server that has a row, oldest first, each with `alive` (its heartbeat is recent) and `leader`."""
    rows = store.select(TABLE, order_by="started_at")
    moment = datetime.now(timezone.utc).timestamp()
    out = []
    for row in rows:
        alive = moment - datetime.fromisoformat(row["heartbeat_at"]).timestamp() < ALIVE_S
        out.append({"id": row["id"], "url": row["url"], "pid": row["pid"], "host": row["host"],
                    "started_at": row["started_at"], "heartbeat_at": row["heartbeat_at"], "alive": alive,
                    "leader": bool(row["is_leader"]) and alive})
    return out


def live_loads(store: Store) -> dict[str, dict]:
    """Each live server's published gateway load by its id (a rollout sums their answer counts, serving/metrics.py
    `outcomes`; a dead server's requests are gone)."""
    moment = datetime.now(timezone.utc).timestamp()
    return {row["id"]: row["gateway_load"] for row in store.select(TABLE)
            if row.get("gateway_load") and moment - datetime.fromisoformat(row["heartbeat_at"]).timestamp() < ALIVE_S}


def gateway_loads(store: Store, exclude: str) -> list[dict]:
    """The gateway loads the live servers other than `exclude` published."""
    return [load for server, load in live_loads(store).items() if server != exclude]
