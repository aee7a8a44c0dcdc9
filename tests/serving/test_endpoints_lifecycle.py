"""Deployment lifecycle with fake model servers: probes restart crashed and hung instances,
rolling updates drop no request, settings survive a restart, deleting stops processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
from pathlib import Path

import httpx
import pytest
from gateway_harness import SCORE, wait_until

from forgeflow.errors import Conflict, InvalidInput
from forgeflow.processes import pid_alive
from forgeflow.store.states import DeploymentState


class Load:
    """Requests sent back to back by a few clients until stopped; every answer kept."""

    def __init__(self, gw, endpoint, key, clients=4):
        self.codes: list[int] = []
        self.bodies: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run(gw, endpoint, key, clients)))

    async def _run(self, gw, endpoint, key, clients):
        async with httpx.AsyncClient(timeout=30) as c:
            async def worker():
                while not self._stop.is_set():
                    r = await c.post(f"{gw.url}/endpoints/{endpoint}/score", json=SCORE,
                                     headers={"Authorization": f"Bearer {key}"})
                    self.codes.append(r.status_code)
                    self.bodies.append(r.json())
            await asyncio.gather(*[worker() for _ in range(clients)])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)



def _instances(gw, ep, dep):
    return gw.svc.show_deployment(ep, dep)["instances"]


def test_a_killed_instance_is_replaced_under_load_without_losing_requests(gateway):
    key = gateway.endpoint("kill-ep")
    gateway.deploy("kill-ep", "blue", {"delay": 0.01}, instance_count=2)
    gateway.svc.update_endpoint("kill-ep", traffic={"blue": 100})
    victim = _instances(gateway, "kill-ep", "blue")[0]
    with Load(gateway, "kill-ep", key, clients=4) as load:
        wait_until(lambda: len(load.codes) > 20, what="load")
        os.kill(victim["pid"], signal.SIGKILL)
        fresh = wait_until(lambda: [i for i in _instances(gateway, "kill-ep", "blue")
                               if i["index"] == victim["index"] and i["pid"] != victim["pid"] and i["ready"]],
                      what="replacement")[0]
        seen = len(load.codes)
        wait_until(lambda: len(load.codes) > seen + 20, what="load after the replacement")
    assert fresh["restarts"] == 1
    failed = [c for c in load.codes if c != 200]
    assert len(failed) <= 4, failed  # at most the requests in flight on the killed instance
    assert len(load.codes) > 40
    assert 'forgeflow_instance_restarts_total{endpoint="kill-ep",deployment="blue"} 1' in \
        httpx.get(f"{gateway.url}/metrics", headers=gateway.admin).text


def test_a_hung_instance_fails_liveness_and_is_restarted(gateway):
    key = gateway.endpoint("hang-ep")
    gateway.deploy("hang-ep", "blue")
    gateway.svc.update_endpoint("hang-ep", traffic={"blue": 100})
    old = _instances(gateway, "hang-ep", "blue")[0]
    os.kill(old["pid"], signal.SIGSTOP)
    try:
        fresh = wait_until(lambda: [i for i in _instances(gateway, "hang-ep", "blue") if i["pid"] != old["pid"] and i["ready"]],
                      what="restart of the stopped instance")[0]
    finally:
        if pid_alive(old["pid"]):
            os.kill(old["pid"], signal.SIGCONT)
    assert fresh["restarts"] == 1
    wait_until(lambda: not pid_alive(old["pid"]), what="the hung process to be killed")
    r = httpx.post(f"{gateway.url}/endpoints/hang-ep/score", json=SCORE, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200


def test_requests_go_only_to_ready_instances(gateway):
    key = gateway.endpoint("ready-ep")
    gateway.deploy("ready-ep", "blue", {"output": "B"}, instance_count=2)
    gateway.svc.update_endpoint("ready-ep", traffic={"blue": 100})
    inst = gateway.svc.supervisor.instances("ready-ep", "blue")
    inst[1].ready = False  # as if its readiness probe failed
    inst[1].proc.send_signal(signal.SIGSTOP)  # it would hang any request sent to it
    try:
        for _ in range(10):
            r = httpx.post(f"{gateway.url}/endpoints/ready-ep/score", json=SCORE,
                           headers={"Authorization": f"Bearer {key}"}, timeout=5)
            assert r.status_code == 200
    finally:
        inst[1].proc.send_signal(signal.SIGCONT)


def test_rolling_update_drops_no_request(gateway):
    key = gateway.endpoint("roll-ep")
    gateway.deploy("roll-ep", "blue", {"output": "v1", "delay": 0.02}, instance_count=2)
    gateway.svc.update_endpoint("roll-ep", traffic={"blue": 100})
    old_pids = {i["pid"] for i in _instances(gateway, "roll-ep", "blue")}
    v2 = json.dumps({"output": "v2", "delay": 0.02, "load": 0.5})
    with Load(gateway, "roll-ep", key) as load:
        wait_until(lambda: len(load.codes) > 10, what="load")
        gateway.svc.update_deployment("roll-ep", "blue", {"model": "fake:2"}, resolve=lambda ref: (ref, Path(v2), {}))
        assert gateway.svc.show_deployment("roll-ep", "blue")["provisioning_state"] == "Updating"
        with pytest.raises(Conflict):
            gateway.svc.update_deployment("roll-ep", "blue", {"instance_count": 3})
        dep = gateway.wait("roll-ep", "blue")
        seen = len(load.codes)
        wait_until(lambda: len(load.codes) > seen + 10, what="load after the roll")
    assert set(load.codes) == {200}, [c for c in load.codes if c != 200]
    outputs = [b["output"] for b in load.bodies]
    assert outputs[0] == "v1" and outputs[-1] == "v2"
    assert set(outputs[seen + 4:]) == {"v2"}  # once it settled, only new instances answer
    assert dep["model"] == "fake:2" and len(dep["instances"]) == 2
    assert not old_pids & {i["pid"] for i in dep["instances"]}
    wait_until(lambda: not any(pid_alive(p) for p in old_pids), what="old instances to stop")


def test_settings_update_at_once_and_scale_without_restarting(gateway):
    key = gateway.endpoint("set-ep")
    gateway.deploy("set-ep", "blue", {"delay": 0.5}, request_settings={"max_concurrent_requests_per_instance": 1})
    gateway.svc.update_endpoint("set-ep", traffic={"blue": 100})
    pid = _instances(gateway, "set-ep", "blue")[0]["pid"]
    dep = gateway.svc.update_deployment("set-ep", "blue", {"request_settings.max_concurrent_requests_per_instance": 4,
                                                           "request_settings.request_timeout_ms": 200})
    assert dep["provisioning_state"] == "Succeeded" and dep["instances"][0]["pid"] == pid
    assert dep["request_settings"] == {"max_concurrent_requests_per_instance": 4, "request_timeout_ms": 200}
    r = httpx.post(f"{gateway.url}/endpoints/set-ep/score", json=SCORE, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 408  # the new timeout holds at once
    gateway.svc.update_deployment("set-ep", "blue", {"instance_count": 2, "request_settings.request_timeout_ms": 5000})
    dep = gateway.wait("set-ep", "blue")
    assert [i["index"] for i in dep["instances"]] == [0, 1] and dep["instances"][0]["pid"] == pid
    gateway.svc.update_deployment("set-ep", "blue", {"instance_count": 1})
    dep = gateway.wait("set-ep", "blue")
    assert [i["pid"] for i in dep["instances"]] == [pid]
    for bad, field in (({"request_settings.max_concurrent_requests_per_instance": 0}, "request_settings"),
                       ({"instance_count": 99}, "instance_count"), ({"colour": "red"}, "colour"),
                       ({"liveness_probe.period": -1}, "liveness_probe.period")):
        with pytest.raises(InvalidInput) as e:
            gateway.svc.update_deployment("set-ep", "blue", bad)
        assert field in (e.value.field or "") + e.value.message


def test_a_failed_update_rolls_back_and_keeps_serving(gateway):
    key = gateway.endpoint("back-ep")
    gateway.deploy("back-ep", "blue", {"output": "v1"})
    gateway.svc.update_endpoint("back-ep", traffic={"blue": 100})
    broken = json.dumps({"load": -1})  # never ready
    import forgeflow.serving.supervisor as sup

    sup.READY_TIMEOUT_S, saved = 1.5, sup.READY_TIMEOUT_S
    try:
        gateway.svc.update_deployment("back-ep", "blue", {"model": "fake:bad"}, resolve=lambda ref: (ref, Path(broken), {}))
        dep = wait_until(lambda: (d := gateway.svc.show_deployment("back-ep", "blue"))["provisioning_state"] != "Updating" and d,
                    what="the update to end")
    finally:
        sup.READY_TIMEOUT_S = saved
    assert dep["provisioning_state"] == "Failed" and "rolled back" in dep["error"]
    assert dep["model"] == "fake:1" and len(dep["instances"]) == 1
    r = httpx.post(f"{gateway.url}/endpoints/back-ep/score", json=SCORE, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200 and r.json()["output"] == "v1"


def test_new_fields_survive_a_restart_and_delete_stops_processes(database_url, gateway):
    """On SQLite and on Postgres: every endpoint and deployment field comes back from the store."""
    from forgeflow.serving.endpoints import EndpointService
    from forgeflow.serving.placement import LocalPlacement

    gateway.endpoint("keep-ep", auth_mode="token", max_body_bytes=4096)
    gateway.deploy("keep-ep", "blue")
    gateway.deploy("keep-ep", "green", request_settings={"request_timeout_ms": 1234})
    gateway.svc.update_endpoint("keep-ep", traffic={"blue": 100}, mirror_traffic={"green": 20})
    pids = [i["pid"] for d in ("blue", "green") for i in _instances(gateway, "keep-ep", d)]
    # a second service over the same store sees what a restarted server would
    again = EndpointService(gateway.ws, LocalPlacement(gateway.ws.paths), "http://x")
    ep = again.show_endpoint("keep-ep")
    assert (ep["auth_mode"], ep["max_body_bytes"], ep["mirror_traffic"]) == ("token", 4096, {"green": 20})
    green = again.show_deployment("keep-ep", "green")
    assert green["request_settings"]["request_timeout_ms"] == 1234
    assert green["liveness_probe"]["period"] == 0.2
    assert again.credentials("keep-ep")["access_token"]
    gateway.svc.delete_endpoint("keep-ep")
    wait_until(lambda: not any(pid_alive(p) for p in pids), what="processes to stop")


def test_a_flow_deployment_reserving_gpus_is_refused_naming_the_resource(gateway, tmp_path):
    gateway.endpoint("flow-gpu-ep")
    with pytest.raises(InvalidInput) as e:
        gateway.svc.create_deployment("flow-gpu-ep", "blue", f"flow:{tmp_path}", tmp_path, runtime="flow",
                                      resources={"gpus": 1})
    assert e.value.field == "resources.gpus" and "flow deployment runs its flow on the CPU" in e.value.message
    assert gateway.svc.list_deployments("flow-gpu-ep") == []


def test_a_llamacpp_deployment_reserving_gpus_is_refused_naming_the_resource(gateway, tmp_path):
    """llama.cpp runs on the CPU here: a GPU reserved for it would sit idle, so the spec says so instead."""
    gateway.endpoint("llama-gpu-ep")
    with pytest.raises(InvalidInput) as e:
        gateway.svc.create_deployment("llama-gpu-ep", "blue", "tiny:1", tmp_path, runtime="llamacpp",
                                      resources={"gpus": 1})
    assert e.value.field == "resources.gpus" and "llamacpp runtime decodes on the CPU" in e.value.message
    assert gateway.svc.list_deployments("llama-gpu-ep") == []


def test_an_update_just_after_a_roll_succeeded_is_not_settled_by_that_roll(gateway, monkeypatch):
    """A roll writes its success to the row, then to the spec the supervisor runs. An update that lands between
    the two (the row already said Succeeded, so it was let in) is its own generation: the earlier roll does not
    mark the newer spec Succeeded while that spec's own roll is still starting its instance."""
    gateway.endpoint("gen-ep")
    gateway.deploy("gen-ep", "blue")
    svc, sup, key = gateway.svc, gateway.svc.supervisor, ("gen-ep", "blue")
    succeed, calls = svc.deployment_succeeded, []
    row_written, settle, second_done = threading.Event(), threading.Event(), threading.Event()

    def held(done_key):
        calls.append(threading.current_thread())
        if len(calls) == 1:  # the first roll: its row says Succeeded, its spec waits for the test
            succeed(done_key)
            row_written.set()
            assert settle.wait(10), "the test never let the first roll settle"
        else:  # the second roll's success waits until the test has looked
            assert second_done.wait(10), "the test never let the second roll succeed"
            succeed(done_key)

    monkeypatch.setattr(svc, "deployment_succeeded", held)
    try:
        svc.update_deployment(*key, {"instance_count": 2})
        assert row_written.wait(30), "the first roll did not succeed"
        svc.update_deployment(*key, {"instance_count": 3})  # the row says Succeeded: it is let in
        settle.set()
        calls[0].join(10)
        assert not calls[0].is_alive()
        assert sup.running()[key].state == DeploymentState.UPDATING  # the first roll left the newer spec alone
        assert sup.running()[key].instance_count == 3
    finally:
        settle.set()
        second_done.set()
    dep = gateway.wait(*key)
    assert [i["index"] for i in dep["instances"]] == [0, 1, 2]
    wait_until(lambda: sup.running()[key].state == DeploymentState.SUCCEEDED, what="the second roll to settle")


def test_an_update_let_in_by_a_rolled_back_one_is_not_undone_by_it(gateway, monkeypatch):
    """A failed roll writes its rollback to the row (Failed, the old spec), then to what the supervisor runs. An
    update let in between the two (the row no longer said Updating) keeps its spec: the rollback restores the old
    spec only over the spec it undid."""
    import forgeflow.serving.supervisor as sup

    gateway.endpoint("undo-ep")
    gateway.deploy("undo-ep", "blue", {"output": "v1"})
    svc, key = gateway.svc, ("undo-ep", "blue")
    fail, calls = svc.deployment_failed, []
    row_written, restore = threading.Event(), threading.Event()

    def held(done_key, reason, **kw):
        calls.append(threading.current_thread())
        fail(done_key, reason, **kw)
        row_written.set()
        assert restore.wait(10), "the test never let the rollback restore its spec"

    monkeypatch.setattr(svc, "deployment_failed", held)
    ready_timeout = sup.READY_TIMEOUT_S
    monkeypatch.setattr(sup, "READY_TIMEOUT_S", 1.5)
    broken = json.dumps({"load": -1})  # never ready
    try:
        svc.update_deployment(*key, {"model": "fake:bad"}, resolve=lambda ref: (ref, Path(broken), {}))
        assert row_written.wait(30), "the broken update was not rolled back"
        assert svc.show_deployment(*key)["provisioning_state"] == "Failed"
        monkeypatch.setattr(sup, "READY_TIMEOUT_S", ready_timeout)  # the next roll's instance has its usual time
        svc.update_deployment(*key, {"instance_count": 2})  # let in: the row says Failed
        restore.set()
        calls[0].join(10)
        assert not calls[0].is_alive()
        assert svc.supervisor.running()[key].instance_count == 2  # the rollback left the newer spec alone
    finally:
        restore.set()
    dep = gateway.wait(*key)
    assert dep["model"] == "fake:1" and [i["index"] for i in dep["instances"]] == [0, 1]


def test_a_roll_cut_off_by_a_new_launch_leaves_the_new_instances_alone(gateway, monkeypatch):
    """A roll still waiting for its new instance when the deployment is deleted and created again (or the leader's
    pass launches it anew) gives up without a rollback: the pool there now is the new launch's, and it comes up."""
    gateway.endpoint("cut-ep")
    gateway.deploy("cut-ep", "blue", {"output": "v1"})
    svc, sup, key = gateway.svc, gateway.svc.supervisor, ("cut-ep", "blue")
    launched, rollback = threading.Event(), sup._rollback
    monkeypatch.setattr(sup, "_rollback", lambda *a: (launched.wait(10), rollback(*a)))
    broken = json.dumps({"load": -1})  # never ready: the roll waits for it
    svc.update_deployment(*key, {"model": "fake:bad"}, resolve=lambda ref: (ref, Path(broken), {}))
    wait_until(lambda: len(sup.instances(*key)) == 2, what="the roll's new instance")
    svc.delete_deployment(*key)
    gateway.deploy("cut-ep", "blue", {"output": "v2"}, wait=False)
    launched.set()  # the cut-off roll reads what it rolled only now, after the new launch
    dep = gateway.wait(*key)
    assert len(dep["instances"]) == 1 and dep["instances"][0]["ready"] and dep["model"] == "fake:1"


def test_of_two_updates_read_in_the_same_state_only_the_first_is_written(gateway, monkeypatch):
    """Two servers may read a deployment Succeeded at once and both update it; the write goes only over the state it
    was read in, so the second is a 409 and nothing of it lands (two rolls never run at once)."""
    gateway.endpoint("cas-ep")
    gateway.deploy("cas-ep", "blue")
    svc, key = gateway.svc, ("cas-ep", "blue")
    read = svc._deployment(*key)  # what this server read, before the other server's update landed
    svc.store.update("deployments", {"endpoint": "cas-ep", "name": "blue"}, {"state": "Updating"})
    monkeypatch.setattr(svc, "_deployment", lambda endpoint, name: read)
    with pytest.raises(Conflict, match="changed meanwhile") as refused:
        svc.update_deployment(*key, {"instance_count": 2})
    assert refused.value.status_code == 409
    row = svc.store.get("deployments", endpoint="cas-ep", name="blue")
    assert row["state"] == "Updating" and row["instance_count"] == 1
    assert svc.supervisor.running()[key].instance_count == 1  # the supervisor never heard of it


@pytest.mark.parametrize("path, body", [("score", SCORE),
                                        ("v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})])
def test_a_client_that_hangs_up_frees_its_place_and_the_instances_connection(gateway, path, body):
    """A client that leaves before a non-streamed answer is ready: the gateway stops waiting for the instance at
    once (closing its connection there, which ends the decoding, tests/inference/test_model_server_client_left.py)
    and its place in the deployment's admission is free again, long before the instance would have answered."""
    key = gateway.endpoint("left-ep")
    gateway.deploy("left-ep", "blue", {"delay": 60})
    gateway.svc.update_endpoint("left-ep", traffic={"blue": 100})
    port = int(gateway.url.rsplit(":", 1)[1])
    data = json.dumps(body).encode()
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    client.sendall(f"POST /endpoints/left-ep/{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                   f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    pending = lambda: gateway.svc.admission.pending(("left-ep", "blue"))  # noqa: E731
    wait_until(lambda: pending() == 1, what="the request forwarded to the instance")
    client.close()
    wait_until(lambda: pending() == 0, timeout=20, what="the place freed")
