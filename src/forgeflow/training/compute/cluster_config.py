"""The cluster config forgeflow writes for Ray's autoscaler, from a ray compute target's scale settings.

Azure's AmlCompute settings map onto one autoscaler node type named after the target's `size`:
`min_nodes` -> `min_workers`, `max_nodes` -> `max_workers` (and the cluster's `max_workers`),
`idle_time_before_scale_down` seconds -> `idle_timeout_minutes` (Ray's VM launcher, `ray up`) or
`autoscalerOptions.idleTimeoutSeconds` (KubeRay). The head node offers no CPUs, so jobs and instances land on the
workers the autoscaler brings up and takes down.

What forgeflow cannot know (machine types, images, regions, the shared volume) is a `<FILL IN: ...>` placeholder,
never a guess; `placeholders()` lists them so the CLI can say what is left to fill.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import version
from typing import Any

from forgeflow import __version__
from forgeflow.errors import InvalidInput
from forgeflow.raycluster import NODE_TYPE_LABEL

VM_PROVIDERS = ("aws", "gcp", "azure")
PROVIDERS = (*VM_PROVIDERS, "kuberay")
HEAD_TYPE = "ray.head.default"
DEFAULT_WORKER_TYPE = "ray.worker.default"
_MARK = "<FILL IN: "
_PYTHON = f"Python {sys.version_info.major}.{sys.version_info.minor}"  # Ray wants one Python minor everywhere


def fill(what: str) -> str:
    """A value the user must supply, marked so it cannot pass for a real one."""
    return f"{_MARK}{what}>"


def placeholders(config: Any) -> list[str]:
    """Every `<FILL IN: ...>` left in a config, in document order, each once."""
    found: list[str] = []
    if isinstance(config, dict):
        for value in config.values():
            found += placeholders(value)
    elif isinstance(config, list):
        for value in config:
            found += placeholders(value)
    elif isinstance(config, str) and config.startswith(_MARK):
        found.append(config)
    return list(dict.fromkeys(found))


def worker_type(target: dict[str, Any]) -> str:
    """The autoscaler node type a target's work runs on: its `size`, or Ray's default worker type."""
    return target.get("size") or DEFAULT_WORKER_TYPE


def idle_timeout_minutes(seconds: int) -> int | float:
    minutes = seconds / 60
    return int(minutes) if minutes.is_integer() else round(minutes, 4)


def node_types(target: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`available_node_types` for Ray's autoscaler: a head with no CPUs and the target's worker type, its
    `node_config` and worker `resources` left for the provider (or the caller) to fill. A worker type named by the
    target's `size` labels its nodes with it (`ray.io/node-group`), the label the target's jobs and instances
    select nodes by."""
    worker: dict[str, Any] = {"resources": {}, "node_config": {}, "min_workers": int(target["min_nodes"]),
                              "max_workers": int(target["max_nodes"])}
    if target.get("size"):
        worker["labels"] = {NODE_TYPE_LABEL: target["size"]}
    return {
        HEAD_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "min_workers": 0, "max_workers": 0},
        worker_type(target): worker,
    }


def autoscaler_config(target: dict[str, Any], provider: str, storage: str) -> dict[str, Any]:
    """A cluster config for `ray up` on aws, gcp or azure (Ray's VM launcher)."""
    if provider not in VM_PROVIDERS:
        raise InvalidInput(f"provider {provider!r} is not one of {', '.join(PROVIDERS)}", field="provider")
    types = node_types(target)  # worker resources stay {}: the VM launchers read CPUs and GPUs off the type
    for name, node_type in types.items():
        node_type["node_config"] = _node_config(provider, name)
    config: dict[str, Any] = {
        "cluster_name": target["name"],
        "max_workers": int(target["max_nodes"]),
        "idle_timeout_minutes": idle_timeout_minutes(int(target["idle_time_before_scale_down"])),
        "provider": _provider(provider),
        "auth": {"ssh_user": fill("the SSH user of the node image")},
        "head_node_type": HEAD_TYPE,
        "available_node_types": types,
        "setup_commands": [fill(f"commands that install ray[default]=={version('ray')} and forgeflow=={__version__} "
                                f"and mount the shared storage at {storage}")],
    }
    if provider == "azure":
        config["auth"] |= {"ssh_private_key": fill("path to the SSH private key"),
                           "ssh_public_key": fill("path to the SSH public key")}
    return config


def _provider(provider: str) -> dict[str, Any]:
    if provider == "aws":
        return {"type": "aws", "region": fill("AWS region")}
    if provider == "gcp":
        return {"type": "gcp", "region": fill("GCP region"), "availability_zone": fill("GCP zone"),
                "project_id": fill("GCP project id")}
    return {"type": "azure", "location": fill("Azure location"), "resource_group": fill("Azure resource group")}


def _node_config(provider: str, node_type: str) -> dict[str, Any]:
    if provider == "aws":
        return {"InstanceType": fill(f"EC2 instance type of node type {node_type}"),
                "ImageId": fill(f"AMI id of an image with {_PYTHON}")}
    if provider == "gcp":
        return {"machineType": fill(f"machine type of node type {node_type}"),
                "disks": [{"boot": True, "autoDelete": True, "type": "PERSISTENT",
                           "initializeParams": {"sourceImage": fill(f"boot image with {_PYTHON}")}}]}
    return {"azure_arm_parameters": {"vmSize": fill(f"VM size of node type {node_type}"),
                                     "imagePublisher": fill("image publisher"), "imageOffer": fill("image offer"),
                                     "imageSku": fill("image SKU"), "imageVersion": fill("image version")}}


def kuberay_manifest(target: dict[str, Any], storage: str) -> dict[str, Any]:
    """A KubeRay `RayCluster` with in-tree autoscaling and one worker group scaled by the target's settings. The
    group is named after the target's size: KubeRay labels its nodes with the group's name (`ray.io/node-group`),
    which the target's jobs and instances select nodes by, so the size must be a valid group name."""
    size = target.get("size")
    if size and _k8s_name(size) != size:
        raise InvalidInput(f"size {size!r} cannot name a KubeRay worker group (lowercase letters, digits and '-'; "
                           f"e.g. {_k8s_name(size)!r}): KubeRay labels the group's nodes with its name, which is how "
                           "the target's work finds them", field="size")
    image = fill(f"container image with ray[default]=={version('ray')} and forgeflow=={__version__}")
    mounts = [{"name": "forgeflow-storage", "mountPath": storage}]
    volumes = [{"name": "forgeflow-storage",
                "persistentVolumeClaim": {"claimName": fill(f"a ReadWriteMany volume claim holding {storage}")}}]

    def pod(container: str, resources: dict[str, Any] | None = None) -> dict[str, Any]:
        spec = {"name": container, "image": image, "volumeMounts": mounts}
        if resources:
            spec["resources"] = resources
        return {"spec": {"containers": [spec], "volumes": volumes}}

    limits = {"cpu": fill(f"CPUs of one {worker_type(target)} pod"),
              "memory": fill(f"memory of one {worker_type(target)} pod")}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": _k8s_name(target["name"])},
        "spec": {
            "rayVersion": version("ray"),
            "enableInTreeAutoscaling": True,
            "autoscalerOptions": {"idleTimeoutSeconds": int(target["idle_time_before_scale_down"]),
                                  "upscalingMode": "Default"},
            "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": pod("ray-head")},
            "workerGroupSpecs": [{
                "groupName": _k8s_name(worker_type(target)),
                "replicas": int(target["min_nodes"]),
                "minReplicas": int(target["min_nodes"]),
                "maxReplicas": int(target["max_nodes"]),
                "rayStartParams": {},
                "template": pod("ray-worker", {"limits": limits, "requests": dict(limits)}),
            }],
        },
    }


def _k8s_name(name: str) -> str:
    """A Kubernetes object name (lowercase letters, digits, dashes) for a forgeflow name."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63] or "forgeflow"


def cluster_config(target: dict[str, Any], provider: str, storage: str) -> dict[str, Any]:
    """The config for `provider` of a ray target; `storage` is the directory every node mounts."""
    if target.get("type") != "ray":
        raise InvalidInput(f"compute target {target['name']!r} is {target.get('type')}: cluster configs are for ray "
                           "targets", field="compute")
    if provider == "kuberay":
        return kuberay_manifest(target, storage)
    return autoscaler_config(target, provider, storage)
