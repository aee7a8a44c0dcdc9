"""What a deployment becomes: a new one from its create request, a changed one from `--set` changes. The endpoint
service stores the result and hands it to the supervisor; the rules for each field are serving/specs.py's.

A deployment serves one model (`model_ref`, its folder `model_path`) or several fine-tunes of one base model
(`adapters`: each registered version and its LoRA adapter, on `model_path` = the base's folder), as the API layer
resolved them (`Resolve`). A llamacpp deployment serves GGUF weights of `gguf_type` (q4_k_m unless given).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from forgeflow.errors import InvalidInput
from forgeflow.inference.runtimes import check_runtime
from forgeflow.serving import specs
from forgeflow.serving.records import Deployment
from forgeflow.store.db import now
from forgeflow.store.states import DeploymentState

# What a deployment's `model` (one reference, or a list of fine-tunes) is served from: (model_ref, model_path,
# adapters: NAME:VERSION -> LoRA adapter folder, empty for one model).
Resolved = tuple[str, str | os.PathLike, dict[str, str]]
Resolve = Callable[[Any], Resolved]
# The compute target a deployment runs on, checked against the resources given for it (the endpoint service's).
PlacementTarget = Callable[[str, dict[str, Any]], dict]


def new_deployment(endpoint: str, name: str, resolved: Resolved, *, instance_count: int | None, runtime: str,
                   request_settings: dict[str, Any] | None, liveness_probe: dict[str, Any] | None,
                   readiness_probe: dict[str, Any] | None, scale_settings: dict[str, Any] | None,
                   compute: str | None, resources: dict[str, Any] | None, gguf_type: str | None,
                   target: PlacementTarget) -> Deployment:
    """instance_count defaults to 1, or to max(min_instances, 1) when it autoscales: a deployment is seen to
    come up once even if it may scale to zero later."""
    scale = specs.scale_settings(scale_settings)
    if instance_count is None:
        instance_count = max(specs.instance_range(scale)[0], 1)
    specs.instance_count(instance_count, scale)
    if runtime != specs.FLOW_RUNTIME:  # a flow folder is checked by the API layer
        check_runtime(runtime)
    checked_resources = specs.resources(resources)
    specs.check_gpus_used(runtime, checked_resources)
    place = target(specs.compute(specs.LOCAL_COMPUTE if compute is None else compute), resources or {})
    ref, path, adapters = resolved
    return Deployment(
        endpoint=endpoint, name=name, model_ref=ref, model_path=str(path), runtime=runtime,
        instance_count=int(instance_count), request_settings=specs.request_settings(request_settings),
        liveness_probe=specs.probe("liveness_probe", liveness_probe),
        readiness_probe=specs.probe("readiness_probe", readiness_probe),
        state=DeploymentState.CREATING, error=None, created_at=now(), updated_at=now(), scale_settings=scale,
        compute=place["name"], resources=checked_resources, adapters=dict(adapters),
        gguf_type=specs.gguf_type(gguf_type, runtime),
    )


def changed_deployment(old: Deployment, sets: dict[str, Any], resolve: Resolve | None,
                       target: PlacementTarget) -> Deployment:
    """`old` with the `path=value` changes applied, in state Updating. A new runtime brings its own GGUF default
    (none off llamacpp) unless gguf_type is set with it."""
    if not sets:
        raise InvalidInput("nothing to update: pass --set FIELD=VALUE", field="set")
    spec = {"model": old.models if old.adapters else old.model_ref, "instance_count": old.instance_count,
            "runtime": old.runtime, "request_settings": old.request_settings, "liveness_probe": old.liveness_probe,
            "readiness_probe": old.readiness_probe, "scale_settings": old.scale_settings, "compute": old.compute,
            "resources": old.resources, "gguf_type": old.gguf_type}
    new_spec = specs.apply_sets(spec, sets)
    given = {k.partition(".")[2]: v for k, v in sets.items() if k.startswith("resources.")}
    given |= sets["resources"] if isinstance(sets.get("resources"), dict) else {}
    if given or new_spec["compute"] != old.compute:  # where instances run changes: check the new place
        place = target(new_spec["compute"], given)
        new_spec["compute"] = place["name"]
        if place["type"] == "local":
            new_spec["resources"] = specs.resources(None)  # this machine reserves nothing for an instance
    keep = ("model", "gguf_type")
    new = old.replace(**{k: new_spec[k] for k in spec if k not in keep},
                      state=DeploymentState.UPDATING, error=None, updated_at=now())
    if new_spec["model"] != spec["model"]:
        if resolve is None:
            raise InvalidInput("the model cannot be changed here", field="model")
        ref, path, adapters = resolve(new_spec["model"])
        new = new.replace(model_ref=ref, model_path=str(path), adapters=dict(adapters))
    if new.runtime != old.runtime:
        check_runtime(new.runtime)
    if "gguf_type" in sets:
        gguf = specs.gguf_type(sets["gguf_type"], new.runtime)
    elif new.runtime != old.runtime:
        gguf = specs.gguf_type(None, new.runtime)
    else:
        gguf = old.gguf_type
    specs.check_gpus_used(new.runtime, new.resources)
    return new.replace(gguf_type=gguf)
