"""A follower (a second server on the workspace's database) serves every endpoint through the instances the leader
publishes, and what is changed through it reaches the leader's supervisor through the store."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from gateway_harness import post, wait_until

from forgeflow.serving.instances import reconcile
from forgeflow.store.states import DeploymentState


def _ready(gw, endpoint: str, name: str) -> list[dict]:
    return [i for i in gw.svc.show_deployment(endpoint, name)["instances"] if i["ready"]]


def test_changes_through_a_follower_reach_the_leader_and_the_follower_serves(gateway, follower_gateway):
    leader, follower = gateway, follower_gateway
    assert leader.app.state.ff.leadership.leads and not follower.app.state.ff.leadership.leads

    key = follower.endpoint("fol-ep")
    follower.deploy("fol-ep", "blue")  # the leader's reconcile pass starts it; the follower sees it succeed
    follower.svc.update_endpoint("fol-ep", traffic={"blue": 100})
    assert len(leader.svc.supervisor.ready_instances("fol-ep", "blue")) == 1
    assert not follower.svc.supervisor.instances("fol-ep", "blue")  # a follower runs nothing itself
    wait_until(lambda: _ready(follower, "fol-ep", "blue"), 10, "the follower to read the published instance")
    assert post(follower, "fol-ep", key).status_code == 200
    assert post(leader, "fol-ep", key).status_code == 200

    follower.svc.update_deployment("fol-ep", "blue", {"instance_count": 2})
    follower.wait("fol-ep", "blue")
    assert len(leader.svc.supervisor.ready_instances("fol-ep", "blue")) == 2
    wait_until(lambda: len(_ready(follower, "fol-ep", "blue")) == 2, 10, "the follower to see both instances")

    # An instance the leader replaces: the follower forwards to its successor once it is ready.
    victim = leader.svc.show_deployment("fol-ep", "blue")["instances"][0]
    os.kill(victim["pid"], signal.SIGKILL)
    wait_until(lambda: sorted(i["restarts"] for i in _ready(follower, "fol-ep", "blue")) == [0, 1], 30,
               "the follower to see the replacement ready")
    assert {post(follower, "fol-ep", key).status_code for _ in range(6)} == {200}

    # A key replaced through the leader stops opening the endpoint on the follower within about a second.
    leader.svc.regenerate_keys("fol-ep", "primary")
    wait_until(lambda: post(follower, "fol-ep", key).status_code == 401, 5, "the follower to refuse the old key")

    follower.svc.update_endpoint("fol-ep", traffic={})
    follower.svc.delete_deployment("fol-ep", "blue")
    wait_until(lambda: not leader.svc.supervisor.instances("fol-ep", "blue"), 10, "the leader to stop it")
    wait_until(lambda: not follower.svc.board.instances(("fol-ep", "blue")), 10, "the follower to see it gone")


def test_a_deployment_deleted_and_created_again_through_a_follower_starts_anew(gateway, follower_gateway):
    """Both changes land between two of the leader's passes: the leader sees a row being created under a name it
    runs already, and must start the new deployment rather than leave it Creating for ever."""
    leader, follower = gateway, follower_gateway
    key = follower.endpoint("again-ep")
    follower.deploy("again-ep", "blue", {"output": "first"})
    old = [i["pid"] for i in leader.svc.show_deployment("again-ep", "blue")["instances"]]
    with leader.svc._deployments_lock:  # hold the leader's pass off until both changes are written
        follower.svc.delete_deployment("again-ep", "blue")
        follower.deploy("again-ep", "blue", {"output": "second"}, wait=False)
    follower.wait("again-ep", "blue", timeout=15)
    new = [i["pid"] for i in leader.svc.show_deployment("again-ep", "blue")["instances"]]
    assert new and not set(new) & set(old)
    follower.svc.update_endpoint("again-ep", traffic={"blue": 100})
    wait_until(lambda: post(follower, "again-ep", key).status_code == 200, 10, "the follower to serve it")
    assert "second" in post(follower, "again-ep", key).text


def test_steady_load_through_a_follower_keeps_an_autoscaled_deployment_up_until_it_stops(gateway, follower_gateway):
    """The leader's autoscaler counts the requests that come through followers (published with their heartbeats):
    a min_instances=0 deployment loaded only through a follower is not scaled in, and still goes to zero once the
    load stops."""
    import json
    import threading
    import time

    from gateway_harness import FAST_LIVENESS, FAST_PROBES

    leader, follower = gateway, follower_gateway
    key = follower.endpoint("busy-ep")
    follower.svc.create_deployment(
        "busy-ep", "blue", "fake:1", json.dumps({"delay": 0.2}),
        request_settings={"max_concurrent_requests_per_instance": 4}, liveness_probe=FAST_LIVENESS,
        readiness_probe=FAST_PROBES, scale_settings={"type": "target_utilization", "min_instances": 0,
                                                     "max_instances": 2, "polling_interval": 0.5,
                                                     "idle_time_before_scale_down": 2})
    follower.wait("busy-ep", "blue")
    follower.svc.update_endpoint("busy-ep", traffic={"blue": 100})
    wait_until(lambda: post(follower, "busy-ep", key).status_code == 200, 10, "the follower to serve it")

    codes: list[int] = []
    stop = time.monotonic() + 8  # four times idle_time_before_scale_down
    def load() -> None:
        while time.monotonic() < stop:
            codes.append(post(follower, "busy-ep", key).status_code)
    clients = [threading.Thread(target=load) for _ in range(2)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    events = leader.svc.show_deployment("busy-ep", "blue")["scale_events"]
    assert not [e for e in events if e["to"] < e["from"]], events  # never scaled in under load
    assert codes and set(codes) == {200}

    wait_until(lambda: leader.svc.show_deployment("busy-ep", "blue")["instance_count"] == 0, 20,
               "the idle deployment to scale to zero")
    assert not leader.svc.supervisor.instances("busy-ep", "blue")


def test_a_follower_on_another_host_does_not_forward_to_the_leaders_loopback(gateway, follower_gateway):
    """A local placement's instances listen on the leader's 127.0.0.1: a follower on another machine would reach
    its own loopback (with the instance's secret). It answers 503 and says what to do instead."""
    leader, follower = gateway, follower_gateway
    key = follower.endpoint("far-ep")
    follower.deploy("far-ep", "blue")
    follower.svc.update_endpoint("far-ep", traffic={"blue": 100})
    wait_until(lambda: post(follower, "far-ep", key).status_code == 200, 10, "the follower to serve it")
    follower.ws.store.execute("UPDATE deployment_instances SET host = 'leader-host.example'")  # as published there
    wait_until(lambda: post(follower, "far-ep", key).status_code == 503, 5, "the follower to stop forwarding")
    answer = post(follower, "far-ep", key).json()
    assert "instances listen on the leader's loopback" in answer["message"] and "Ray target" in answer["message"]
    assert post(leader, "far-ep", key).status_code == 200  # the leader reaches them


def test_a_follower_serves_a_deployment_as_soon_as_it_is_ready_before_its_copy_of_the_board_catches_up(
        gateway, follower_gateway, monkeypatch):
    """The follower's copy of the leader's board is refreshed every READ_CACHE_S; a request that finds no ready
    instance reads it once more before answering 503, so `create` returning Succeeded means served, everywhere."""
    follower = follower_gateway
    monkeypatch.setattr("forgeflow.serving.instances.READ_CACHE_S", 3600.0)
    time.sleep(1.0)  # the reader's current wait ends; its next one outlasts the test
    key = follower.endpoint("new-ep")
    follower.deploy("new-ep", "blue")
    follower.svc.update_endpoint("new-ep", traffic={"blue": 100})
    assert not follower.svc.board.instances(("new-ep", "blue"))  # its copy has not seen the instance yet
    assert post(follower, "new-ep", key).status_code == 200


@pytest.mark.parametrize("rows_read", ["before the success", "between the row and the spec"])
def test_a_deployment_that_succeeds_during_the_leaders_pass_keeps_its_instances(gateway, monkeypatch, rows_read):
    """The leader's pass reads what its supervisor runs, then the stored rows. A creation that succeeds meanwhile
    (the supervisor writes the row, then what it runs) is not taken for a deployment deleted and created again:
    its ready instance keeps running (it was stopped and started anew, and `create` could answer Succeeded with no
    instance), whether the rows were read before the success or once the row, not yet the spec, said so."""
    leader, key = gateway, ("race-ep", "blue")
    svc, sup = leader.svc, leader.svc.supervisor
    release, row_written, settle = threading.Event(), threading.Event(), threading.Event()
    succeed = svc.deployment_succeeded

    def held(done_key):
        assert release.wait(10), "the test never let the success land"
        succeed(done_key)
        row_written.set()
        assert settle.wait(10), "the test never let the spec settle"  # the supervisor's own spec comes after

    monkeypatch.setattr(svc, "deployment_succeeded", held)
    leader.endpoint("race-ep")
    leader.deploy(*key, wait=False)
    wait_until(lambda: sup.instances(*key) and all(i.ready for i in sup.instances(*key)), 30,
               "the instance to be ready, its success held")
    before = [i["pid"] for i in svc.show_deployment(*key)["instances"]]

    def rows_during_the_success():
        if rows_read == "before the success":
            rows = svc._stored()  # still Creating
            release.set()
            settle.set()
            wait_until(lambda: sup.running()[key].state == DeploymentState.SUCCEEDED, 10, "the success to land")
            return rows
        release.set()
        assert row_written.wait(10)
        rows = svc._stored()
        assert [d.state for d in rows if d.key == key] == [DeploymentState.SUCCEEDED]
        return rows

    try:
        with svc._deployments_lock:  # the leader's own pass waits meanwhile
            reconcile(sup, rows_during_the_success)
    finally:
        release.set()
        settle.set()
    dep = leader.wait(*key)
    assert [i["pid"] for i in dep["instances"]] == before and dep["instances"][0]["restarts"] == 0, dep
