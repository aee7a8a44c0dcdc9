"""Two `forgeflow serve` processes on one workspace database: either answers the API and scores every endpoint,
one of them leads (runs jobs and instances); kill the leader with SIGKILL and the other takes over: the running
job finishes and the endpoint answers again."""

from __future__ import annotations

import json
from contextlib import contextmanager

import httpx
import pytest
import sqlalchemy as sa
from instance_procs import instance_pids
from live_server import LiveServer
from waiting import wait_until

from forgeflow.api.app import LEADERSHIP_LOST_EXIT
from forgeflow.store.leadership import LEADER_LOCK
from forgeflow.store.states import JobStatus

pytestmark = pytest.mark.integration

BODY = {"input_data": {"input_string": [{"role": "user", "content": "hi"}], "parameters": {"max_new_tokens": 4}}}
MAX_STEPS = 300  # ~20 steps/s on the tiny model: still running when its leader is killed


def _role(server: LiveServer) -> str | None:
    try:
        return httpx.get(f"{server.url}/api/health", timeout=2).json()["role"]
    except httpx.HTTPError:
        return None


def _score(server: LiveServer, key: str) -> int:
    try:
        return httpx.post(f"{server.url}/endpoints/ms-ep/score", json=BODY, headers={"Authorization": f"Bearer {key}"},
                          timeout=60).status_code
    except httpx.HTTPError:
        return 0


def _me(server: LiveServer, token: str) -> int:
    return httpx.get(f"{server.url}/api/me", headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code


def _rows(path, n=8):
    row = {"messages": [{"role": "user", "content": "Who founded Quillfeather?"},
                        {"role": "assistant", "content": "Ysolde Marrowick founded it in 2009."}]}
    path.write_text("".join(json.dumps(row) + "\n" for _ in range(n)))
    return path


@contextmanager
def _pair(home):
    """Two servers on one home and one database: the first started leads, the second follows."""
    first, second = LiveServer.on_loopback(home), LiveServer.on_loopback(home)
    try:
        first.start()
        second.start()
        yield first, second
    finally:
        for server in (second, first):
            server.stop()


@pytest.fixture
def two_servers(forgeflow_home, database_url):
    """On the test's database: the SQLite file in the home, or a Postgres database."""
    with _pair(forgeflow_home) as pair:
        yield pair


def test_either_server_serves_and_the_follower_takes_over_from_a_killed_leader(two_servers, tiny_model_dir,
                                                                                tmp_path):
    leader, follower = two_servers
    assert (_role(leader), _role(follower)) == ("leader", "follower")
    servers = {s["url"]: s for s in follower.cli_json("serve", "status")["servers"]}
    assert servers[leader.url]["leader"] and not servers[follower.url]["leader"]

    # Created through the follower: the leader's supervisor starts the instance, the follower's CLI sees it ready.
    follower.cli("online-endpoint", "create", "--name", "ms-ep")
    dep = follower.cli_json("online-deployment", "create", "--name", "blue", "--endpoint-name", "ms-ep",
                            "--model", str(tiny_model_dir), "--all-traffic")
    assert dep["provisioning_state"] == "Succeeded" and len(dep["instances"]) == 1, dep
    job = follower.cli_json("job", "create", "--model", str(tiny_model_dir), "--training-data",
                            str(_rows(tmp_path / "train.jsonl")), "--set", f"max_steps={MAX_STEPS}",
                            "--set", "logging_steps=1")
    key = follower.cli_json("online-endpoint", "get-credentials", "--name", "ms-ep")["primary_key"]
    assert _score(leader, key) == 200 and _score(follower, key) == 200  # memory on one, the published table on the other

    # A user made through the leader acts through the follower; the token revoked through the follower is refused
    # by the leader at once (every server reads tokens from the database on each request).
    dana = leader.cli_json("user", "create", "dana", "--role", "reader")
    assert _me(follower, dana["token"]) == 200
    follower.cli("token", "revoke", dana["id"])
    assert _me(leader, dana["token"]) == 401 and _me(follower, dana["token"]) == 401

    # Keys changed through the leader stop working on the follower too, soon.
    fresh = leader.cli_json("online-endpoint", "regenerate-keys", "--name", "ms-ep", "--key-type", "primary")
    wait_until(lambda: _score(follower, key) == 401, 10, "the follower to refuse the replaced key", interval=0.2)
    key = fresh["primary_key"]

    running = wait_until(lambda: (j := follower.cli_json("job", "show", job["id"]))["status"] == JobStatus.RUNNING
                         and (j.get("progress") or {}).get("step", 0) > 0 and j, 120, "the job to run", interval=0.5)
    assert running["progress"]["step"] < MAX_STEPS
    instances = instance_pids(leader.home)
    assert instances

    leader.proc.kill()  # SIGKILL: no shutdown, the lock goes with the process
    leader.proc.wait(10)
    wait_until(lambda: _role(follower) == "leader", 30, "the follower to take over", interval=0.2)
    wait_until(lambda: _score(follower, key) == 200, 180, "the endpoint to answer again", interval=0.5)
    assert not instances & instance_pids(leader.home)  # the dead leader's instance went with it; a new one serves

    done = wait_until(lambda: (j := follower.cli_json("job", "show", job["id"]))["status"] in
                      (JobStatus.COMPLETED, JobStatus.FAILED) and j, 300, "the job to finish", interval=1.0)
    assert done["status"] == JobStatus.COMPLETED, done
    assert done["progress"]["step"] == MAX_STEPS
    dep = follower.cli_json("online-deployment", "show", "--name", "blue", "--endpoint-name", "ms-ep")
    assert dep["provisioning_state"] == "Succeeded" and [i["ready"] for i in dep["instances"]] == [True], dep
    # The job's MLflow run and the registry live in the workspace's database (on Postgres: its `mlflow` schema).
    model = follower.cli_json("model", "create", "--name", "ms-model", "--from-job", job["id"])
    assert follower.cli_json("model", "show", "ms-model:1")["version"] == model["version"] == "1"


@pytest.mark.postgres
def test_a_leader_whose_database_session_ends_exits_and_the_follower_leads(forgeflow_home, postgres, monkeypatch):
    """The database ends the leader's lock session (as a restart or an operator would): a successor may lead at
    once, so the old leader exits rather than run jobs and instances beside it."""
    url = postgres.new_database()
    monkeypatch.setenv("FORGEFLOW_DATABASE_URL", url)
    with _pair(forgeflow_home) as (leader, follower):
        assert (_role(leader), _role(follower)) == ("leader", "follower")
        engine = sa.create_engine(url)
        with engine.connect() as admin:
            ended = admin.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = :k"), {"k": LEADER_LOCK}).all()
        engine.dispose()
        assert ended == [(True,)]
        assert leader.proc.wait(30) == LEADERSHIP_LOST_EXIT
        wait_until(lambda: _role(follower) == "leader", 30, "the follower to take over", interval=0.2)


@pytest.mark.postgres
def test_after_a_database_restart_the_new_leader_runs_jobs_and_serves(forgeflow_home, private_postgres, monkeypatch,
                                                                      tiny_model_dir, tmp_path):
    """The database restarts (every session cut, the leader's lock with it): the old leader exits, the other server
    leads, and it really runs what it leads: a job queued then completes and the endpoint answers through it."""
    monkeypatch.setenv("FORGEFLOW_DATABASE_URL", private_postgres.new_database())
    with _pair(forgeflow_home) as (leader, follower):
        follower.cli("online-endpoint", "create", "--name", "ms-ep")
        dep = follower.cli_json("online-deployment", "create", "--name", "blue", "--endpoint-name", "ms-ep",
                                "--model", str(tiny_model_dir), "--all-traffic")
        assert dep["provisioning_state"] == "Succeeded", dep
        private_postgres.sql("CHECKPOINT")  # the cluster commits asynchronously: keep what was written
        private_postgres.restart()
        assert leader.proc.wait(30) == LEADERSHIP_LOST_EXIT
        wait_until(lambda: _role(follower) == "leader", 30, "the follower to take over", interval=0.2)
        key = follower.cli_json("online-endpoint", "get-credentials", "--name", "ms-ep")["primary_key"]
        job = follower.cli_json("job", "create", "--model", str(tiny_model_dir), "--training-data",
                                str(_rows(tmp_path / "train.jsonl")), "--set", "max_steps=5")
        wait_until(lambda: _score(follower, key) == 200, 180, "the endpoint to answer again", interval=0.5)
        done = wait_until(lambda: (j := follower.cli_json("job", "show", job["id"]))["status"] in
                          (JobStatus.COMPLETED, JobStatus.FAILED) and j, 300, "the job to finish", interval=1.0)
        assert done["status"] == JobStatus.COMPLETED, done
