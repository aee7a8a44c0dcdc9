"""The cluster configs forgeflow writes for Ray's autoscaler: Azure's scale settings mapped onto node types, VM
launcher configs that Ray's own schema and checks accept, KubeRay manifests, and placeholders never passed off as
values; over REST in-process (no cluster is needed to write a config; the CLI's YAML is checked in
tests/e2e/test_ray_compute.py against a real server)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
from ray.autoscaler._private.util import prepare_config, validate_config

from forgeflow.api.app import create_app
from forgeflow.errors import InvalidInput
from forgeflow.store.workspace import Workspace
from forgeflow.training.compute.cluster_config import (
    HEAD_TYPE, VM_PROVIDERS, cluster_config, idle_timeout_minutes, node_types, placeholders)
from forgeflow.training.compute.targets import validate_target

SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def target(**settings) -> dict:
    base = {"name": "gpu-cluster", "type": "ray", "address": "head:6379", "size": "gpu-worker", "min_nodes": 0,
            "max_nodes": 4, "idle_time_before_scale_down": 120}
    return validate_target(base | settings).model_dump()


def test_azure_scale_settings_map_onto_the_worker_node_type():
    types = node_types(target())
    assert types["gpu-worker"] == {"resources": {}, "node_config": {}, "min_workers": 0, "max_workers": 4,
                                   "labels": {"ray.io/node-group": "gpu-worker"}}  # what jobs and instances select
    assert types[HEAD_TYPE]["resources"] == {"CPU": 0} and types[HEAD_TYPE]["max_workers"] == 0
    assert list(node_types(target(size=None))) == [HEAD_TYPE, "ray.worker.default"]
    assert [idle_timeout_minutes(s) for s in (120, 90, 6, 0)] == [2, 1.5, 0.1, 0]
    assert isinstance(idle_timeout_minutes(120), int)


@pytest.mark.parametrize("provider", VM_PROVIDERS)
def test_vm_launcher_configs_pass_rays_own_schema_and_checks(provider):
    config = cluster_config(target(min_nodes=1, max_nodes=3, idle_time_before_scale_down=300), provider, "/mnt/ff")
    assert config["cluster_name"] == "gpu-cluster" and config["provider"]["type"] == provider
    assert config["max_workers"] == 3 and config["idle_timeout_minutes"] == 5
    worker = config["available_node_types"]["gpu-worker"]
    assert (worker["min_workers"], worker["max_workers"]) == (1, 3)
    assert config["head_node_type"] == HEAD_TYPE
    assert config["available_node_types"][HEAD_TYPE]["resources"] == {"CPU": 0}
    jsonschema.validate(config, SCHEMA)
    validate_config(prepare_config(config))  # Ray's `ray up` path: its provider defaults merged in, then checked


def test_every_value_forgeflow_cannot_know_is_a_marked_placeholder():
    config = cluster_config(target(), "aws", "/mnt/ff")
    marks = placeholders(config)
    assert config["provider"]["region"] in marks
    assert config["available_node_types"]["gpu-worker"]["node_config"]["InstanceType"] in marks
    assert any("gpu-worker" in m for m in marks) and any("/mnt/ff" in m for m in marks)
    assert all(m.startswith("<FILL IN: ") and m.endswith(">") for m in marks)
    assert len(marks) == len(set(marks))
    # The settings forgeflow does know are values, not placeholders.
    assert not placeholders({k: config[k] for k in ("cluster_name", "max_workers", "idle_timeout_minutes")})


def test_kuberay_manifest_scales_one_worker_group_by_the_target():
    manifest = cluster_config(target(name="GPU_Cluster", min_nodes=1, max_nodes=5, idle_time_before_scale_down=90),
                              "kuberay", "/mnt/ff")
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster")
    spec = manifest["spec"]
    assert manifest["metadata"]["name"] == "gpu-cluster" and spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["idleTimeoutSeconds"] == 90
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    [group] = spec["workerGroupSpecs"]
    assert group["groupName"] == "gpu-worker"
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (1, 1, 5)
    [container] = group["template"]["spec"]["containers"]
    assert container["volumeMounts"][0]["mountPath"] == "/mnt/ff"
    marks = placeholders(manifest)
    assert container["image"] in marks and container["resources"]["limits"]["cpu"] in marks
    # KubeRay labels a group's nodes with the group's name: a size that cannot be one is refused, naming it
    with pytest.raises(InvalidInput, match="cannot name a KubeRay worker group") as bad:
        cluster_config(target(size="gpu_worker"), "kuberay", "/mnt/ff")
    assert bad.value.field == "size"


def test_only_ray_targets_and_known_providers_get_a_config():
    with pytest.raises(InvalidInput, match="ray targets") as local:
        cluster_config(validate_target({"name": "box"}).model_dump(), "aws", "/mnt/ff")
    assert local.value.field == "compute"
    with pytest.raises(InvalidInput, match="aws, gcp, azure, kuberay") as other:
        cluster_config(target(), "openstack", "/mnt/ff")
    assert other.value.field == "provider"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def api():
    import httpx

    ws = Workspace.open()
    app = create_app(ws, background=False)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                     headers={"Authorization": f"Bearer {ws.admin_token()}"}) as client:
            yield client


@pytest.mark.anyio
async def test_cluster_config_over_rest(api, forgeflow_home):
    # A target comes before the cluster its config launches: one whose cluster does not answer yet is kept,
    # and the answer says the cluster is unreachable (nothing listens on port 1).
    created = await api.post("/api/compute", json={"name": "gpu-cluster", "type": "ray", "size": "gpu-worker",
                                                    "address": "http://127.0.0.1:1", "max_nodes": 2})
    assert created.status_code == 201
    cluster = created.json()["cluster"]
    assert cluster["reachable"] is False and "cannot reach the Ray cluster at http://127.0.0.1:1" in cluster["error"]
    r = await api.get("/api/compute/gpu-cluster/cluster-config", params={"provider": "aws"})
    assert r.status_code == 200
    body = r.json()
    assert body["config"]["available_node_types"]["gpu-worker"]["max_workers"] == 2
    assert body["placeholders"] == placeholders(body["config"])
    # No storage set: the nodes mount the workspace's artifacts folder.
    assert any(str(forgeflow_home / "artifacts") in p for p in body["placeholders"])
    r = await api.get("/api/compute/gpu-cluster/cluster-config", params={"provider": "openstack"})
    assert r.status_code == 400 and r.json()["field"] == "provider"
    r = await api.get("/api/compute/local/cluster-config", params={"provider": "kuberay"})
    assert r.status_code == 400 and "ray targets" in r.json()["message"]
