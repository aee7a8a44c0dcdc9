"""Deployments on a compute target, without a cluster: the fields `compute` and `resources` validated at the edge
(each refusal names its field), each deployment sent to its target's placement by `TargetPlacement`, and an
instance still being placed left unprobed. The deployment on a real Ray cluster is tests/e2e/test_ray_endpoints.py."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from gateway_harness import FAST_PROBES, wait_until
from test_placement_seam import ThreadPlacement

from forgeflow.errors import InvalidInput, NotFound, ServerUnavailable
from forgeflow.processes import free_port
from forgeflow.serving import specs
from forgeflow.serving.endpoints import EndpointService
from forgeflow.serving.placement import TargetPlacement
from forgeflow.store.workspace import Workspace
from forgeflow.training.compute.targets import ComputeTargets, validate_target


def test_resources_are_checked_and_name_the_field():
    assert specs.resources(None) == {"cpus": 1, "gpus": 0, "memory_mb": 0}
    assert specs.resources({"cpus": 2.0, "gpus": 0.25, "memory_mb": 4096}) == {"cpus": 2, "gpus": 0.25,
                                                                                 "memory_mb": 4096}
    assert specs.resources({"gpus": 1}, {"cpus": 0.5, "gpus": 0, "memory_mb": 0})["cpus"] == 0.5
    for given, field in (({"cpus": 0}, "resources.cpus"), ({"cpus": 1.5}, "resources.cpus"),
                         ({"cpus": float("nan")}, "resources.cpus"), ({"cpus": 0.00001}, "resources.cpus"),
                         ({"cpus": 2000}, "resources.cpus"), ({"gpus": -1}, "resources.gpus"),
                         ({"gpus": True}, "resources.gpus"), ({"memory_mb": 1.5}, "resources.memory_mb"),
                         ({"memory_mb": "4G"}, "resources.memory_mb"), ({"disk": 1}, "resources.disk")):
        with pytest.raises(InvalidInput) as refused:
            specs.resources(given)
        assert refused.value.field == field, given


def test_sets_change_compute_and_one_resource():
    spec = {"compute": "local", "resources": dict(specs.DEFAULT_RESOURCES), "instance_count": 1}
    out = specs.apply_sets(spec, {"compute": "azureml:cluster", "resources.gpus": 1})
    assert out == {"compute": "cluster", "resources": {"cpus": 1, "gpus": 1, "memory_mb": 0}, "instance_count": 1}
    with pytest.raises(InvalidInput, match="resources is an object"):
        specs.apply_sets(spec, {"resources": 2})
    with pytest.raises(InvalidInput) as refused:
        specs.apply_sets(spec, {"compute": ""})
    assert refused.value.field == "compute"


@pytest.fixture
def service():
    """An endpoint service whose `cluster` target (an address that takes TCP connections, as a cluster's GCS
    does) runs instances on a placement of its own."""
    listener = socket.create_server(("127.0.0.1", 0))
    ws = Workspace.open()
    targets = ComputeTargets(ws.store)
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    targets.create(validate_target({"name": "cluster", "type": "ray", "address": address}))
    local, remote = ThreadPlacement(), ThreadPlacement()
    built = []
    svc = EndpointService(ws, TargetPlacement(local, targets.get, lambda t: built.append(t["name"]) or remote),
                          "http://x")
    svc.create_endpoint("ray-ep")
    yield svc, local, remote, built
    svc.shutdown()
    listener.close()


def test_compute_and_resources_are_refused_where_they_cannot_be_honoured(service):
    svc, *_ = service
    deploy = lambda **kw: svc.create_deployment("ray-ep", "blue", "fake:1", Path("unused"), **kw)  # noqa: E731
    with pytest.raises(NotFound) as missing:
        deploy(compute="nowhere")
    assert missing.value.field == "compute" and "forgeflow compute create" in str(missing.value)
    with pytest.raises(InvalidInput) as local_gpu:
        deploy(resources={"gpus": 1})
    assert local_gpu.value.field == "resources.gpus" and "this machine" in str(local_gpu.value)
    with pytest.raises(InvalidInput) as bad:
        deploy(compute="cluster", resources={"cpus": -1})
    assert bad.value.field == "resources.cpus"
    ComputeTargets(svc.store).create(validate_target({"name": "dash", "type": "ray", "address": "http://head:8265"}))
    with pytest.raises(InvalidInput) as dashboard:
        deploy(compute="dash")
    assert dashboard.value.field == "compute" and "GCS address" in str(dashboard.value)
    ComputeTargets(svc.store).create(validate_target({"name": "gone", "type": "ray",
                                                      "address": f"127.0.0.1:{free_port()}"}))
    with pytest.raises(ServerUnavailable) as unreachable:
        deploy(compute="gone")
    assert unreachable.value.field == "compute" and "cannot reach the Ray cluster" in str(unreachable.value)
    assert svc.list_deployments("ray-ep") == []


def test_each_deployment_runs_on_its_targets_placement(service):
    svc, local, remote, built = service
    svc.create_deployment("ray-ep", "blue", "fake:1", Path("unused"), instance_count=2, compute="cluster",
                          resources={"cpus": 0.5}, liveness_probe=FAST_PROBES, readiness_probe=FAST_PROBES)
    dep = wait_until(lambda: (d := svc.show_deployment("ray-ep", "blue"))["provisioning_state"] == "Succeeded" and d)
    assert dep["compute"] == "cluster" and dep["resources"] == {"cpus": 0.5, "gpus": 0, "memory_mb": 0}
    assert built == ["cluster"] and len(remote.servers) == 2 and not local.servers

    victim = svc.supervisor.instances("ray-ep", "blue")[0]  # the supervisor asks the placement that started it
    remote.crashed.add(victim)
    wait_until(lambda: victim in remote.stopped and len(svc.supervisor.ready_instances("ray-ep", "blue")) == 2)
    assert len(remote.servers) == 2 and not local.servers

    # moving to this machine rolls every instance there; the resources a cluster reserved no longer apply
    dep = svc.update_deployment("ray-ep", "blue", {"compute": "local"})
    wait_until(lambda: svc.show_deployment("ray-ep", "blue")["provisioning_state"] == "Succeeded")
    assert dep["resources"] == specs.DEFAULT_RESOURCES and len(local.servers) == 2 and not remote.servers
    with pytest.raises(InvalidInput) as refused:
        svc.update_deployment("ray-ep", "blue", {"resources.cpus": 2})
    assert refused.value.field == "resources.cpus"
    assert svc.deployment_logs("ray-ep", "blue") == "ray-ep/blue: no logs\nray-ep/blue: no logs"


class SlowPlacement(ThreadPlacement):
    """Instances that get their address a while after they start, as a cluster's do once a node takes them."""

    def start(self, dep, indexes):
        instances = super().start(dep, indexes)
        for inst in instances:
            url, inst.url = inst.url, ""
            threading.Timer(1.0, setattr, (inst, "url", url)).start()
        return instances


def test_an_instance_being_placed_is_not_probed():
    """Liveness probes start once an instance has an address: failing fast ones meanwhile would fail the deployment."""
    placement = SlowPlacement()
    svc = EndpointService(Workspace.open(), placement, "http://x")
    try:
        svc.create_endpoint("slow-ep")
        svc.create_deployment("slow-ep", "blue", "fake:1", Path("unused"), liveness_probe=FAST_PROBES,
                              readiness_probe=FAST_PROBES)
        dep = wait_until(lambda: (d := svc.show_deployment("slow-ep", "blue"))["provisioning_state"] != "Creating"
                         and d)
        assert dep["provisioning_state"] == "Succeeded", dep
        assert dep["instances"][0]["restarts"] == 0
    finally:
        svc.shutdown()

