"""A server killed with kill -9 leaves no instance behind: instances exit when their server is gone, and the
next server stops any that could not."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest
from instance_procs import instance_pids
from live_server import LiveServer
from waiting import wait_until

from forgeflow.processes import pid_alive

pytestmark = pytest.mark.integration

BODY = {"input_data": {"input_string": [{"role": "user", "content": "hi"}], "parameters": {"max_new_tokens": 4}}}



def _until(predicate, timeout=60.0, what="condition"):
    return wait_until(predicate, timeout, what, interval=0.2)


def test_instances_do_not_outlive_a_killed_server(live_server, tiny_model_dir):
    """issue 10, finding 2: after kill -9 of `forgeflow serve`, a running instance exits by itself (its
    lifeline closed); one that could not (stopped) is stopped by the restarted server; afterwards exactly
    the deployment's instances run and the endpoint answers."""
    s = live_server
    s.cli("online-endpoint", "create", "--name", "orphan-ep")
    dep = s.cli_json("online-deployment", "create", "--name", "blue", "--endpoint-name", "orphan-ep",
                     "--model", str(tiny_model_dir), "--instance-count", "2", "--all-traffic")
    assert dep["provisioning_state"] == "Succeeded", dep
    first = [i["pid"] for i in dep["instances"]]
    assert instance_pids(s.home) == set(first)

    stuck, running = first
    os.kill(stuck, signal.SIGSTOP)  # cannot act on its lifeline: the next server must stop it
    s.proc.kill()
    s.proc.wait(timeout=30)
    _until(lambda: not pid_alive(running), 30, "the running instance to exit with its server")
    assert pid_alive(stuck)

    s.start()
    assert not pid_alive(stuck)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        dep = s.cli_json("online-deployment", "show", "--name", "blue", "--endpoint-name", "orphan-ep")
        if dep["provisioning_state"] == "Succeeded" and all(i["ready"] for i in dep["instances"]):
            break
        time.sleep(0.5)
    assert dep["provisioning_state"] == "Succeeded", dep
    now = {i["pid"] for i in dep["instances"]}
    assert len(now) == 2 and not now & set(first)
    assert instance_pids(s.home) == now
    key = s.cli_json("online-endpoint", "get-credentials", "--name", "orphan-ep")["primary_key"]
    r = httpx.post(f"{s.url}/endpoints/orphan-ep/score", json=BODY, headers={"Authorization": f"Bearer {key}"},
                   timeout=60)
    assert r.status_code == 200, r.text

    s.stop()
    _until(lambda: not instance_pids(s.home), 30, "the instances to stop with their server")


def test_a_second_server_on_the_workspace_leaves_the_first_ones_instances_running(live_server, tiny_model_dir):
    """issue 10, finding 2 (review): starting a second `forgeflow serve` on the same workspace (another port)
    stops none of the first server's instances: the first one's instance keeps its pid and its endpoint answers;
    each server's instances stop with it."""
    first = live_server
    first.cli("online-endpoint", "create", "--name", "two-ep")
    dep = first.cli_json("online-deployment", "create", "--name", "blue", "--endpoint-name", "two-ep",
                         "--model", str(tiny_model_dir), "--instance-count", "1", "--all-traffic")
    assert dep["provisioning_state"] == "Succeeded", dep
    [pid] = [i["pid"] for i in dep["instances"]]

    second = LiveServer.on_loopback(first.home)
    try:
        second.start()  # its startup (stopping leftovers) is over once it answers
        assert pid_alive(pid)
        dep = first.cli_json("online-deployment", "show", "--name", "blue", "--endpoint-name", "two-ep")
        assert [i["pid"] for i in dep["instances"]] == [pid] and dep["instances"][0]["restarts"] == 0, dep
        key = first.cli_json("online-endpoint", "get-credentials", "--name", "two-ep")["primary_key"]
        r = httpx.post(f"{first.url}/endpoints/two-ep/score", json=BODY, headers={"Authorization": f"Bearer {key}"},
                       timeout=60)
        assert r.status_code == 200, r.text
        assert pid_alive(pid)
    finally:
        second.stop()
    assert pid_alive(pid)
    first.stop()
    _until(lambda: not instance_pids(first.home), 30, "the instances to stop with their servers")
