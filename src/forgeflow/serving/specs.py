"""A deployment's settings: request settings, probes, the compute target its instances run on and the
resources each reserves there, their defaults, their validation, and `--set a.b=value` updates, named as
`az ml online-deployment` names them.

Probe times are in seconds (floats allowed, so tests can probe fast). Liveness asks "does the
process answer HTTP at all" (a hung or stopped process does not); readiness asks "is the model
loaded" (`/health` answers 200).
"""

from __future__ import annotations

import copy
from typing import Any

from forgeflow.errors import InvalidInput

MAX_INSTANCES = 8
# The largest scoring body the server takes (api/guard.py's cap): the most an endpoint's max_body_bytes may be,
# and what every instance is started to accept, since the gateway forwards the body as it came.
SCORING_MAX_BYTES = 64 * 1024 * 1024
FLOW_RUNTIME = "flow"  # a deployment of a flow folder, served by forgeflow.flows.serve instead of a model server
DEFAULT_REQUEST_SETTINGS = {"request_timeout_ms": 90_000, "max_concurrent_requests_per_instance": 1}
DEFAULT_LIVENESS = {"initial_delay": 5.0, "period": 5.0, "timeout": 5.0, "failure_threshold": 3, "success_threshold": 1}
DEFAULT_READINESS = {"initial_delay": 0.0, "period": 1.0, "timeout": 5.0, "failure_threshold": 3, "success_threshold": 1}
PROBES = {"liveness_probe": DEFAULT_LIVENESS, "readiness_probe": DEFAULT_READINESS}
# Upper bounds: an hour per request, and far more than any instance serves at once.
MAX_REQUEST_SETTINGS = {"request_timeout_ms": 3_600_000, "max_concurrent_requests_per_instance": 1000}
MAX_PROBE_SECONDS = 3600
MAX_THRESHOLD = 1000
# Where instances run: `local` is this machine; another compute target (a Ray cluster) places each instance on
# one of its nodes with what `resources` asks for. Only a cluster can reserve resources for an instance.
LOCAL_COMPUTE = "local"
DEFAULT_RESOURCES = {"cpus": 1, "gpus": 0, "memory_mb": 0}  # memory_mb 0: no memory reserved
MAX_RESOURCES = {"cpus": 1024, "gpus": 64, "memory_mb": 16 * 1024 * 1024}
# Fields `online-deployment update --set` may change; `model` is resolved by the API layer.
SETTABLE = ("model", "instance_count", "runtime", "request_settings", "liveness_probe", "readiness_probe",
            "compute", "resources")


def request_settings(given: dict[str, Any] | None, base: dict[str, Any] | None = None) -> dict[str, int]:
    """Merge and check request settings: every value a positive integer up to its bound."""
    out = dict(DEFAULT_REQUEST_SETTINGS) | dict(base or {})
    for key, value in (given or {}).items():
        if key not in DEFAULT_REQUEST_SETTINGS:
            raise InvalidInput(f"unknown request setting {key!r}: valid are {', '.join(DEFAULT_REQUEST_SETTINGS)}",
                               field=f"request_settings.{key}")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REQUEST_SETTINGS[key]:
            raise InvalidInput(f"request_settings.{key} must be a whole number from 1 to {MAX_REQUEST_SETTINGS[key]}, "
                               f"got {value!r}", field=f"request_settings.{key}")
        out[key] = value
    return out


def probe(kind: str, given: dict[str, Any] | None, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge and check one probe (liveness_probe or readiness_probe)."""
    defaults = PROBES[kind]
    out = dict(defaults) | dict(base or {})
    for key, value in (given or {}).items():
        where = f"{kind}.{key}"
        if key not in defaults:
            raise InvalidInput(f"unknown probe setting {key!r}: valid are {', '.join(defaults)}", field=where)
        if key.endswith("threshold"):
            if isinstance(value, float) and value.is_integer():  # 3.0: the REST body's probe values are floats
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_THRESHOLD:
                raise InvalidInput(f"{where} must be a whole number from 1 to {MAX_THRESHOLD}, got {value!r}", field=where)
        else:
            # `not 0 <= value` also refuses NaN, which compares false with everything (and would disable the probe)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_PROBE_SECONDS:
                raise InvalidInput(f"{where} must be a number of seconds from 0 to {MAX_PROBE_SECONDS}, got {value!r}",
                                   field=where)
            if key in ("period", "timeout") and value <= 0:
                raise InvalidInput(f"{where} must be more than 0 seconds", field=where)
            value = float(value)
        out[key] = value
    return out


def instance_count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INSTANCES:
        raise InvalidInput(f"instance_count must be a whole number from 1 to {MAX_INSTANCES}, got {value!r}",
                           field="instance_count")
    return value


def resources(given: dict[str, Any] | None, base: dict[str, Any] | None = None) -> dict[str, int | float]:
    """Merge and check what each instance asks its node for: `cpus` and `gpus` a whole number or a fraction
    below 1 (instances then share one, as Ray allows), `memory_mb` a whole number of MiB (0: none reserved)."""
    out = dict(DEFAULT_RESOURCES) | dict(base or {})
    for key, value in (given or {}).items():
        where = f"resources.{key}"
        if key not in DEFAULT_RESOURCES:
            raise InvalidInput(f"unknown resource {key!r}: valid are {', '.join(DEFAULT_RESOURCES)}", field=where)
        top = MAX_RESOURCES[key]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInput(f"{where} must be a number, got {value!r}", field=where)
        if key == "memory_mb":
            if not isinstance(value, int) or not 0 <= value <= top:
                raise InvalidInput(f"{where} must be a whole number of MiB from 0 to {top}, got {value!r}", field=where)
        else:
            # a fraction shares one CPU or GPU between instances; NaN and infinities fail both tests
            ok = 0 <= value <= top if isinstance(value, int) else 0 < value < 1 and round(value, 4) == value
            if not ok:
                raise InvalidInput(f"{where} must be a whole number up to {top}, or a fraction below 1 with at most "
                                   f"4 decimals, got {value!r}", field=where)
            if key == "cpus" and value == 0:
                raise InvalidInput(f"{where} must be more than 0: an instance needs CPU time", field=where)
        out[key] = value
    return out


def compute(value: Any) -> str:
    """A compute target's name (whether it exists is the endpoint service's question); `azureml:` is dropped."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"compute must be a compute target's name (see: forgeflow compute list), got {value!r}",
                           field="compute")
    return value.strip().removeprefix("azureml:")


def apply_sets(spec: dict[str, Any], sets: dict[str, Any]) -> dict[str, Any]:
    """Apply `path=value` changes to a deployment spec, as `az ml ... update --set` does.

    spec holds model, instance_count, runtime, request_settings, liveness_probe, readiness_probe, compute,
    resources.
    A path names a top-level field or one key below it; a whole object may be set at once.
    """
    out = copy.deepcopy(spec)
    for path, value in sets.items():
        top, _, sub = path.partition(".")
        if top not in SETTABLE:
            raise InvalidInput(f"--set {path}: unknown field {top!r}; settable are {', '.join(SETTABLE)}", field=path)
        if top in ("request_settings", "resources", *PROBES):
            if sub:
                given = {sub: value}
            elif isinstance(value, dict):
                given = value
            else:
                raise InvalidInput(f"--set {path}: {top} is an object; set one key, e.g. {top}.KEY=VALUE", field=path)
            out[top] = (request_settings(given, out.get(top)) if top == "request_settings"
                        else resources(given, out.get(top)) if top == "resources"
                        else probe(top, given, out.get(top)))
        elif sub:
            raise InvalidInput(f"--set {path}: {top} has no sub-fields", field=path)
        elif top == "instance_count":
            out[top] = instance_count(value)
        elif top == "compute":
            out[top] = compute(value)
        else:
            if not isinstance(value, str) or not value:
                raise InvalidInput(f"--set {path}: {top} must be a non-empty string", field=path)
            out[top] = value
    return out
