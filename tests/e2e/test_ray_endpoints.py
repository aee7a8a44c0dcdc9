"""A deployment on a real Ray cluster (the session's loopback cluster: a head with no CPUs and two worker nodes):
`forgeflow serve` is the driver, each instance a Ray actor running the model server on a worker node, the gateway
reaching it over the network with the instance's secret."""

from __future__ import annotations

import os
import signal

import httpx
import pytest
from live_server import LiveServer
from waiting import wait_until

pytestmark = [pytest.mark.ray, pytest.mark.integration]

BODY = {"input_data": {"input_string": [{"role": "user", "content": "hi"}], "parameters": {"max_new_tokens": 4}}}


def _wait(what, check, timeout=120):
    return wait_until(check, timeout, what, interval=0.3)


def _answers(url):
    try:
        httpx.get(f"{url}/health", timeout=2)
        return True
    except httpx.HTTPError:
        return False


@pytest.fixture
def ray_driver(loopback_ray):
    """This test process as a second driver of the cluster, to look at and kill the server's actors."""
    import ray

    ray.init(address=loopback_ray.address, namespace="forgeflow", log_to_driver=False)
    yield ray
    ray.shutdown()


def test_instances_run_on_worker_nodes_and_are_replaced(loopback_ray, ray_driver, forgeflow_home, tiny_model_dir):
    ray = ray_driver
    s = LiveServer.on_loopback(forgeflow_home)
    s.start()
    try:
        from forgeflow.store.workspace import Workspace

        admin = {"Authorization": f"Bearer {Workspace.open().admin_token()}"}
        api = f"{s.url}/api"
        r = httpx.post(f"{api}/compute", headers=admin,
                       json={"name": "cluster", "type": "ray", "address": loopback_ray.address})
        assert r.status_code == 201, r.text
        s.cli("online-endpoint", "create", "--name", "ray-ep")
        dep = s.cli_json("online-deployment", "create", "--name", "blue", "--endpoint-name", "ray-ep",
                         "--model", str(tiny_model_dir), "--compute", "cluster", "--instance-count", "2",
                         "--instance-cpus", "1", "--all-traffic", "--set", "readiness_probe.period=0.5")
        assert dep["provisioning_state"] == "Succeeded", dep
        assert dep["compute"] == "cluster" and dep["resources"] == {"cpus": 1, "gpus": 0, "memory_mb": 0}

        # each instance is an actor on a worker node (the head has no CPUs), answering at that node's address
        workers = {node.node_id for node in loopback_ray.workers.values()}
        instances = dep["instances"]
        assert len(instances) == 2 and {i["node_id"] for i in instances} <= workers, instances
        for inst in instances:
            actor = ray.get_actor(inst["actor_name"], namespace="forgeflow")
            assert actor is not None and inst["url"].startswith(f"http://{inst['node_ip']}:")
            assert inst["state"] == "running" and inst["compute"] == "cluster"
        logs = s.cli_json("online-deployment", "get-logs", "--name", "blue", "--endpoint-name", "ray-ep")["text"]
        assert all(i["actor_name"] in logs for i in instances) and "READY" in logs, logs

        # this server drives one cluster: a deployment on another is refused, naming the field
        # (the answer reads the unreachable cluster live, bounded by the server: more than httpx's 5 s default)
        r = httpx.post(f"{api}/compute", headers=admin, json={"name": "other", "type": "ray", "address": "elsewhere:6379"},
                       timeout=60)
        assert r.status_code == 201, r.text
        r = httpx.post(f"{api}/endpoints/ray-ep/deployments", headers=admin,
                       json={"name": "green", "model": str(tiny_model_dir), "compute": "other"})
        assert r.status_code == 409 and r.json()["field"] == "compute", r.text

        key = s.cli_json("online-endpoint", "get-credentials", "--name", "ray-ep")["primary_key"]
        score = f"{s.url}/endpoints/ray-ep/score"
        r = httpx.post(score, json=BODY, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        assert r.status_code == 200 and isinstance(r.json()["output"], str), r.text
        # the instance itself answers only its gateway: neither no key nor the endpoint's key opens it
        for headers in ({}, {"Authorization": f"Bearer {key}"}):
            assert httpx.post(f"{instances[0]['url']}/score", json=BODY, headers=headers, timeout=10).status_code == 401

        # fewer instances: one actor is drained and ended
        dep = s.cli_json("online-deployment", "update", "--name", "blue", "--endpoint-name", "ray-ep",
                         "--set", "instance_count=1")
        assert dep["provisioning_state"] == "Succeeded" and len(dep["instances"]) == 1, dep
        [kept] = dep["instances"]
        [gone] = [i for i in instances if i["actor_name"] != kept["actor_name"]]
        _wait("the removed instance's actor to end", lambda: gone["actor_name"] not in _named_actors(ray))
        _wait("the removed instance's program to exit", lambda: not _answers(gone["url"]))

        # a killed actor: its instance ends with it, and the supervisor places a fresh one
        ray.kill(ray.get_actor(kept["actor_name"], namespace="forgeflow"))
        _wait("the killed instance's program to exit", lambda: not _answers(kept["url"]))
        show = f"{api}/endpoints/ray-ep/deployments/blue"

        def replaced():
            [inst] = httpx.get(show, headers=admin).json()["instances"]
            return inst if inst["actor_name"] != kept["actor_name"] and inst["ready"] else None

        fresh = _wait("a ready replacement", replaced)
        assert fresh["restarts"] == 1 and fresh["node_id"] in workers
        r = httpx.post(score, json=BODY, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        assert r.status_code == 200, r.text

        # the server's actors are its driver's: a server killed outright takes its instances with it
        os.kill(s.proc.pid, signal.SIGKILL)
        s.proc.wait(10)
        _wait("the instance to end with its server", lambda: not _answers(fresh["url"]), timeout=60)
        _wait("the actor to end with its server", lambda: fresh["actor_name"] not in _named_actors(ray), timeout=60)
    finally:
        s.stop()


def _named_actors(ray) -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == "forgeflow"}
