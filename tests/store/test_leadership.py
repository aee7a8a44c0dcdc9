"""Leadership among servers on one database: one contender wins, the others follow, and when the winner's lock goes
(its process ended, its database session cut) another takes over."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from waiting import wait_until

from forgeflow.store.db import Store
from forgeflow.store.leadership import LEADER_LOCK, AdvisoryLock, FileLock, Leadership, leader_lock, servers

pytestmark = pytest.mark.integration


class Contender:
    """A Leadership with its own store and lock, as one server process has, recording what it was told."""

    def __init__(self, url: str, name: str, poll_s: float = 0.1) -> None:
        self.store = Store(url)
        self.elected = threading.Event()
        self.lost = threading.Event()
        self.lead = Leadership(self.store, leader_lock(self.store), url=f"http://{name}",
                               on_elected=self.elected.set, on_lost=self.lost.set, poll_s=poll_s)

    def stop(self) -> None:
        self.lead.stop()
        self.store.engine.dispose()


@pytest.fixture
def contenders():
    made: list[Contender] = []

    def make(url: str, name: str, poll_s: float = 0.1) -> Contender:
        made.append(Contender(url, name, poll_s))
        return made[-1]

    yield make
    for c in made:
        c.stop()


def _one_leader(a: Contender, b: Contender) -> None:
    rows = {s["url"]: s for s in servers(a.store)}
    assert a.lead.leads and not b.lead.leads
    assert rows["http://a"]["leader"] and not rows["http://b"]["leader"] and rows["http://b"]["alive"]


def test_sqlite_one_of_two_leads_and_the_other_takes_over(tmp_path, contenders):
    url = f"sqlite:///{tmp_path / 'forgeflow.db'}"
    a = contenders(url, "a")
    a.lead.start()
    assert isinstance(a.lead.lock, FileLock) and a.elected.is_set()  # a lone server leads before it answers
    b = contenders(url, "b")
    b.lead.start()
    _one_leader(a, b)
    assert not b.elected.wait(0.5)  # it keeps trying, and keeps losing while a holds the lock
    a.lead.stop()
    wait_until(b.elected.is_set, 10, "the follower to take over")
    assert b.lead.leads and not a.lost.is_set()
    assert [s["url"] for s in servers(b.store) if s["leader"]] == ["http://b"]
    assert "http://a" not in {s["url"] for s in servers(b.store)}  # a server that stops removes its row


def test_the_file_lock_dies_with_its_holder(tmp_path):
    path = tmp_path / "db.leader-lock"
    first, second = FileLock(path), FileLock(path)
    assert first.acquire() and first.held()
    assert not second.acquire()
    first.release()  # as the kernel does when the process that held it ends
    assert second.acquire() and not first.held()
    second.release()


@pytest.mark.postgres
def test_postgres_one_of_two_leads_and_the_other_takes_over(postgres, contenders):
    url = postgres.new_database()
    a = contenders(url, "a")
    a.lead.start()
    assert isinstance(a.lead.lock, AdvisoryLock) and a.elected.is_set()
    b = contenders(url, "b")
    b.lead.start()
    _one_leader(a, b)
    assert not b.elected.wait(0.5)
    a.lead.stop()  # closes its lock's session
    wait_until(b.elected.is_set, 10, "the follower to take over")
    assert b.lead.leads and not a.lost.is_set()


@pytest.mark.postgres
def test_postgres_a_leader_whose_session_is_cut_steps_down_and_another_leads(postgres, contenders):
    url = postgres.new_database()
    a, b = contenders(url, "a"), contenders(url, "b")
    a.lead.start()
    b.lead.start()
    _one_leader(a, b)
    with sa.create_engine(url).connect() as admin:  # the database ends the leader's session, as a restart would
        ended = admin.execute(sa.text(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = :k"), {"k": LEADER_LOCK}).all()
        assert ended == [(True,)]
    wait_until(a.lost.is_set, 10, "the leader to notice its lock is gone")
    assert not a.lead.leads
    wait_until(b.elected.is_set, 10, "the other server to take over")
    assert b.lead.leads


@pytest.mark.postgres
def test_postgres_after_a_database_restart_the_new_leader_starts_what_it_leads(private_postgres, contenders):
    """The restart cuts every session: the old leader's lock goes, and the server that wins next must really lead
    (run on_elected), although its pooled connections died with the database."""
    url = private_postgres.new_database()
    a = contenders(url, "a")
    b = contenders(url, "b", poll_s=3600)  # b contends below, by hand, first thing after the restart
    a.lead.start()
    b.lead.start()
    _one_leader(a, b)
    private_postgres.sql("CHECKPOINT")  # the cluster commits asynchronously: what was written must survive the crash
    private_postgres.restart()
    wait_until(a.lost.is_set, 20, "the old leader to notice its lock is gone")
    b.lead._contend()  # its pooled connection died with the restart
    assert b.elected.is_set() and b.lead.leads
    wait_until(lambda: [s["url"] for s in servers(b.store) if s["leader"]] == ["http://b"], 10, "b's row to lead")


@pytest.mark.postgres
def test_postgres_a_server_that_cannot_write_its_row_does_not_keep_the_lock(postgres, contenders):
    """Winning the lock but failing to say so (the database busy or gone) lets the lock go: a lock held by a server
    that runs nothing would stop every other server from leading."""
    url = postgres.new_database()
    a = contenders(url, "a")
    a.lead.start()
    b = contenders(url, "b")
    b.lead.start()
    b.lead.stop()  # b's row is gone and its thread stopped; contend by hand below
    b.lead._stop.clear()
    a.lead.stop()
    b.store.execute("DROP TABLE servers")  # every write b tries now fails
    with pytest.raises(sa.exc.ProgrammingError):
        b.lead._contend()
    assert not b.lead.leads and not b.elected.is_set()
    other = AdvisoryLock(sa.make_url(url))
    assert other.acquire()  # the lock was let go
    other.release()


@pytest.mark.postgres
def test_postgres_the_lock_session_has_server_side_keepalives(postgres, contenders):
    """The database notices a leader's machine gone within seconds (and ends its lock) only with keepalives of its
    own on the lock's session."""
    a = contenders(postgres.new_database(), "a")
    a.lead.start()
    conn = a.lead.lock._conn
    settings = {name: conn.execute(sa.text(f"SHOW {name}")).scalar()
                for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count")}
    assert settings == {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "1", "tcp_keepalives_count": "3"}


def test_a_server_whose_heartbeat_stopped_for_a_few_polls_is_not_alive(tmp_path):
    """A killed server shows as gone within a few polls, long before its row is deleted as stale."""
    from datetime import datetime, timedelta, timezone

    from forgeflow.store.leadership import ALIVE_S, POLL_S, STALE_S

    store = Store(f"sqlite:///{tmp_path / 'forgeflow.db'}")
    moment = datetime.now(timezone.utc)
    for name, age in (("fresh", 0), ("killed", ALIVE_S + 2)):
        at = (moment - timedelta(seconds=age)).isoformat(timespec="seconds")
        store.insert("servers", {"id": name, "url": f"http://{name}", "pid": 1, "host": "h", "started_at": at,
                                 "heartbeat_at": at, "is_leader": int(name == "killed")})
    alive = {s["id"]: (s["alive"], s["leader"]) for s in servers(store)}
    assert alive == {"fresh": (True, False), "killed": (False, False)}
    assert ALIVE_S <= 5 * POLL_S < STALE_S
    store.engine.dispose()
