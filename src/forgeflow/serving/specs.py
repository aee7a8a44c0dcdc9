"""A deployment's settings: request settings, probes, scale settings, the compute target its instances run on and
the resources each reserves there, their defaults, their validation, and `--set a.b=value` updates, named as
`az ml online-deployment` names them; and the checks of an endpoint's traffic split, body limit and allowed users.

Probe times are in seconds (floats allowed, so tests can probe fast). Liveness asks "does the
process answer HTTP at all" (a hung or stopped process does not); readiness asks "is the model
loaded" (`/health` answers 200).
"""

from __future__ import annotations

import copy
from typing import Any

from forgeflow.errors import InvalidInput
from forgeflow.inference.gguf_export import DEFAULT_TYPE

MAX_INSTANCES = 8
MAX_MIRROR_PERCENT = 50
# The largest scoring body the server takes (api/guard.py's cap): the most an endpoint's max_body_bytes may be,
# and what every instance is started to accept, since the gateway forwards the body as it came.
SCORING_MAX_BYTES = 64 * 1024 * 1024
FLOW_RUNTIME = "flow"  # a deployment of a flow folder, served by forgeflow.flows.serve instead of a model server
# Eight requests at once per instance by default: what either runtime decodes in one batch (the model server's
# --max-batch-size, which instances run at its default of 8); a larger setting queues the rest in the instance. The gateway lets 2 x this many pending per instance, a 429 past that.
DEFAULT_MAX_CONCURRENT = 8
DEFAULT_REQUEST_SETTINGS = {"request_timeout_ms": 90_000, "max_concurrent_requests_per_instance": DEFAULT_MAX_CONCURRENT}
DEFAULT_LIVENESS = {"initial_delay": 5.0, "period": 5.0, "timeout": 5.0, "failure_threshold": 3, "success_threshold": 1}
DEFAULT_READINESS = {"initial_delay": 0.0, "period": 1.0, "timeout": 5.0, "failure_threshold": 3, "success_threshold": 1}
PROBES = {"liveness_probe": DEFAULT_LIVENESS, "readiness_probe": DEFAULT_READINESS}
# Upper bounds: an hour per request, and far more than any instance serves at once.
MAX_REQUEST_SETTINGS = {"request_timeout_ms": 3_600_000, "max_concurrent_requests_per_instance": 1000}
# The most requests one gateway lets pending on one instance at the largest setting: the queue every model server
# is started with, so a change of request settings takes effect without restarting instances. The instance can
# still answer 429 to what one gateway admitted: a request with n choices queues n sequences, and every server
# of the database admits against its own count.
MAX_PENDING_PER_INSTANCE = 2 * MAX_REQUEST_SETTINGS["max_concurrent_requests_per_instance"]
MAX_PROBE_SECONDS = 3600
MAX_THRESHOLD = 1000
# Where instances run: `local` is this machine; another compute target (a Ray cluster) places each instance on
# one of its nodes with what `resources` asks for. Only a cluster can reserve resources for an instance.
LOCAL_COMPUTE = "local"
DEFAULT_RESOURCES = {"cpus": 1, "gpus": 0, "memory_mb": 0}  # memory_mb 0: no memory reserved
MAX_RESOURCES = {"cpus": 1024, "gpus": 64, "memory_mb": 16 * 1024 * 1024}
# Fields `online-deployment update --set` may change; `model` is resolved by the API layer.
SETTABLE = ("model", "instance_count", "runtime", "request_settings", "liveness_probe", "readiness_probe",
            "scale_settings", "compute", "resources", "gguf_type")
# The GGUF weights a llamacpp deployment serves when it names none: k-quants, ~1.4x f16's single-stream decoding on a
# CPU for +1.7% validation loss (bench/README.md, gguf_levels.py); f16 and q8_0 on request (gguf_export's GGUF_TYPES).
DEFAULT_GGUF_TYPE = DEFAULT_TYPE
LEGACY_GGUF_TYPE = "f16"  # what llamacpp deployments stored before gguf_type was recorded serve (a NULL column)
GGUF_RUNTIMES = ("llamacpp",)
MAX_ADAPTERS = 64  # fine-tunes one deployment serves on its base model
# Scale settings, named as Azure ML's TargetUtilizationScaleSettings (plus the compute cluster's
# idle_time_before_scale_down). `default` keeps instance_count instances; `target_utilization` keeps the requests
# pending at the gateway (queued or in flight) near target_utilization_percentage of the instances' request slots
# (max_concurrent_requests_per_instance each), between min_instances (0: scale to zero) and max_instances.
SCALE_TYPES = ("default", "target_utilization")
DEFAULT_SCALE = {"type": "default"}
TARGET_UTILIZATION = {"min_instances": 1, "max_instances": None, "polling_interval": 1.0,
                      "target_utilization_percentage": 70, "idle_time_before_scale_down": 120.0,
                      "target_latency_ms": None}
# (kind, lowest, highest) of each; seconds are floats so tests can poll fast, and a latency target may be null (off).
_SCALE_BOUNDS = {"min_instances": (int, 0, MAX_INSTANCES), "max_instances": (int, 1, MAX_INSTANCES),
                 "polling_interval": (float, 0, MAX_PROBE_SECONDS),
                 "target_utilization_percentage": (int, 1, 100),
                 "idle_time_before_scale_down": (float, 0, 86_400),
                 "target_latency_ms": (int, 1, MAX_REQUEST_SETTINGS["request_timeout_ms"])}


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


def max_concurrent(settings: dict[str, Any]) -> int:
    """A deployment's max_concurrent_requests_per_instance (the default for settings stored without it)."""
    return int(settings.get("max_concurrent_requests_per_instance", DEFAULT_MAX_CONCURRENT))


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


def scale_settings(given: dict[str, Any] | None, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge and check scale settings. A change of type starts from that type's defaults; `default` takes no
    other key, `target_utilization` needs max_instances."""
    if given is not None and not isinstance(given, dict):
        raise InvalidInput("scale_settings must be an object, e.g. {\"type\": \"target_utilization\", "
                           "\"max_instances\": 3}", field="scale_settings")
    given = dict(given or {})
    old_kind = (base or DEFAULT_SCALE).get("type")
    kind = given.pop("type", old_kind)
    if kind not in SCALE_TYPES:
        raise InvalidInput(f"scale_settings.type must be one of {', '.join(SCALE_TYPES)}, got {kind!r}",
                           field="scale_settings.type")
    for key in given:
        if key not in TARGET_UTILIZATION:
            raise InvalidInput(f"unknown scale setting scale_settings.{key}: valid are type, "
                               f"{', '.join(TARGET_UTILIZATION)}",
                               field=f"scale_settings.{key}")
        if kind == "default":
            raise InvalidInput(f"scale_settings.{key} applies to autoscaling: set scale_settings.type="
                               "target_utilization too (type default keeps instance_count instances)",
                               field=f"scale_settings.{key}")
    if kind == "default":
        return dict(DEFAULT_SCALE)
    out = dict(TARGET_UTILIZATION) | ({k: v for k, v in (base or {}).items() if k != "type"} if old_kind == kind
                                      else {})
    for key, value in given.items():
        out[key] = _scale_value(key, value)
    if out["max_instances"] is None:
        raise InvalidInput(f"scale_settings.max_instances is required with type target_utilization: the most "
                           f"instances to scale out to, 1 to {MAX_INSTANCES}", field="scale_settings.max_instances")
    if out["min_instances"] > out["max_instances"]:
        raise InvalidInput(f"scale_settings.min_instances ({out['min_instances']}) is more than "
                           f"scale_settings.max_instances ({out['max_instances']})", field="scale_settings.min_instances")
    return {"type": kind} | out


def _scale_value(key: str, value: Any) -> Any:
    kind, low, high = _SCALE_BOUNDS[key]
    where = f"scale_settings.{key}"
    if value is None and key == "target_latency_ms":
        return None
    if kind is int and isinstance(value, float) and value.is_integer():  # 3.0: JSON numbers may come as floats
        value = int(value)
    if kind is float:
        # `not low <= value` also refuses NaN; a polling interval must be more than 0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high or (
                key == "polling_interval" and value <= 0):
            raise InvalidInput(f"{where} must be a number of seconds from {low} to {high}"
                               f"{' (more than 0)' if key == 'polling_interval' else ''}, got {value!r}", field=where)
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{where} must be a whole number from {low} to {high}"
                           f"{' (or null: no latency target)' if key == 'target_latency_ms' else ''}, got {value!r}",
                           field=where)
    return value


def autoscaled(scale: dict[str, Any] | None) -> bool:
    return (scale or DEFAULT_SCALE).get("type") == "target_utilization"


def instance_range(scale: dict[str, Any] | None) -> tuple[int, int]:
    """The fewest and most instances a deployment may have: its min/max_instances when it autoscales."""
    if scale and autoscaled(scale):
        return scale["min_instances"], scale["max_instances"]
    return 1, MAX_INSTANCES


def instance_count(value: Any, scale: dict[str, Any] | None = None) -> int:
    low, high = instance_range(scale)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        within = " (scale_settings.min_instances to max_instances)" if autoscaled(scale) else ""
        raise InvalidInput(f"instance_count must be a whole number from {low} to {high}{within}, got {value!r}",
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

    spec holds model, instance_count, runtime, request_settings, liveness_probe, readiness_probe, scale_settings,
    compute, resources, gguf_type. `model` may be a list (several fine-tunes of one base).
    A path names a top-level field or one key below it; a whole object may be set at once. Scale settings are
    checked together once every change is in (min and max may move in one update); instance_count then must lie
    within them, and when not set it is brought within them.
    """
    out = copy.deepcopy(spec)
    scale: dict[str, Any] = {}
    for path, value in sets.items():
        top, _, sub = path.partition(".")
        if top not in SETTABLE:
            raise InvalidInput(f"--set {path}: unknown field {top!r}; settable are {', '.join(SETTABLE)}", field=path)
        if top == "scale_settings":
            if sub:
                scale[sub] = value
            elif isinstance(value, dict):
                scale |= value
            else:
                raise InvalidInput(f"--set {path}: scale_settings is an object; set one key, e.g. "
                                   "scale_settings.max_instances=3", field=path)
        elif top in ("request_settings", "resources", *PROBES):
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
            continue  # checked below, against the scale settings this update ends with
        elif top == "compute":
            out[top] = compute(value)
        elif top == "model":
            out[top] = model_refs(value)
        elif top == "gguf_type":
            out[top] = value  # checked against the runtime the update ends with, by the endpoint service
        else:
            if not isinstance(value, str) or not value:
                raise InvalidInput(f"--set {path}: {top} must be a non-empty string", field=path)
            out[top] = value
    if scale:
        out["scale_settings"] = scale_settings(scale, out.get("scale_settings"))
    scale_now = out.get("scale_settings")
    low, high = instance_range(scale_now)
    out["instance_count"] = (instance_count(sets["instance_count"], scale_now) if "instance_count" in sets
                             else min(max(out["instance_count"], low), high))
    return out


def gguf_type(value: Any, runtime: str) -> str | None:
    """The GGUF type a deployment serves: given, or DEFAULT_GGUF_TYPE on a runtime that serves GGUF; None on one
    that does not (where giving one is a 400 naming gguf_type)."""
    from forgeflow.inference.gguf_export import GGUF_TYPES

    if runtime not in GGUF_RUNTIMES:
        if value is not None:
            raise InvalidInput(f"gguf_type={value!r} applies to runtime llamacpp, which serves GGUF weights; runtime "
                               f"{runtime!r} serves the model's own weights: leave gguf_type out, or use --runtime "
                               "llamacpp", field="gguf_type")
        return None
    if value is None:
        return DEFAULT_GGUF_TYPE
    if value not in GGUF_TYPES:
        raise InvalidInput(f"gguf_type must be one of {', '.join(GGUF_TYPES)}, got {value!r}", field="gguf_type")
    return value


def model_refs(value: Any) -> str | list[str]:
    """A deployment's `model`: one reference, or a list of registered versions (several fine-tunes of one base,
    at most MAX_ADAPTERS); a list of one is that one reference."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        refs = [v.strip() for v in value]
        if len(refs) > MAX_ADAPTERS:
            raise InvalidInput(f"model lists {len(refs)} models: one deployment serves at most {MAX_ADAPTERS} "
                               "fine-tunes of its base; spread them over several deployments", field="model")
        if len(set(refs)) < len(refs):
            raise InvalidInput(f"model lists a model twice: {', '.join(refs)}", field="model")
        return refs[0] if len(refs) == 1 else refs
    raise InvalidInput(f"model must be a model's name (NAME:VERSION, a base model or a folder) or a list of "
                       f"registered NAME:VERSION fine-tunes of one base model, got {value!r}", field="model")


def check_gpus_used(runtime: str, resources: dict[str, Any]) -> None:
    """A flow server, and forgeflow's llama.cpp runtime, run on the CPU: GPUs reserved for them would sit idle,
    kept from every other job."""
    if runtime == FLOW_RUNTIME and resources.get("gpus"):
        raise InvalidInput(f"resources.gpus={resources['gpus']}: a flow deployment runs its flow on the CPU and "
                           "would never use a GPU reserved for it; leave resources.gpus at 0 (a model it calls "
                           "through a connection runs on its own deployment)", field="resources.gpus")
    if runtime == "llamacpp" and resources.get("gpus"):
        raise InvalidInput(f"resources.gpus={resources['gpus']}: the llamacpp runtime decodes on the CPU and would "
                           "never use a GPU reserved for it; use --runtime transformers for a GPU, or leave "
                           "resources.gpus at 0", field="resources.gpus")


def check_split(endpoint: str, split: dict[str, int], known: set[str], what: str) -> None:
    for dep, pct in split.items():
        if dep not in known:
            raise InvalidInput(f"{what} names deployment {dep!r}, which endpoint {endpoint!r} does not have "
                               f"(deployments: {', '.join(sorted(known)) or 'none'})", field=what)
        if isinstance(pct, bool) or not isinstance(pct, int) or not 0 <= pct <= 100:
            raise InvalidInput(f"{what} for {dep!r} must be a whole percentage 0-100, got {pct!r}", field=what)


def check_traffic(endpoint: str, traffic: dict[str, int], mirror: dict[str, int], known: set[str]) -> dict[str, int]:
    """Check an endpoint's traffic split (totals 0 or 100) and mirror (one deployment that takes no live traffic, at
    most MAX_MIRROR_PERCENT); the mirror without its zero entries."""
    check_split(endpoint, traffic, known, "traffic")
    check_split(endpoint, mirror, known, "mirror_traffic")
    total = sum(traffic.values())
    if total not in (0, 100):
        raise InvalidInput(f"traffic must add up to 100 (or 0), it adds up to {total}", field="traffic")
    mirrored = {k: v for k, v in mirror.items() if v > 0}
    if len(mirrored) > 1:
        raise InvalidInput("mirror_traffic can name one deployment only", field="mirror_traffic")
    for dep, pct in mirrored.items():
        if pct > MAX_MIRROR_PERCENT:
            raise InvalidInput(f"mirror_traffic for {dep!r} is {pct}%: at most {MAX_MIRROR_PERCENT}%",
                               field="mirror_traffic")
        if traffic.get(dep):
            raise InvalidInput(f"deployment {dep!r} takes live traffic, so it cannot also take mirrored traffic",
                               field="mirror_traffic")
    return mirrored


def check_body_limit(value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1024):
        raise InvalidInput(f"max_body_bytes must be a whole number of bytes, at least 1024, got {value!r}",
                           field="max_body_bytes")


def check_users_mode(users: list[str] | None, auth_mode: str) -> None:
    if users is not None and auth_mode != "token":
        raise InvalidInput("allowed_users needs auth_mode 'token': a key names nobody (set auth_mode to token, or "
                           "clear allowed_users)", field="allowed_users")
