"""Flex flows: `flow.flex.yaml` with `entry: module:function` or `entry: module:Class`.

A class entry is built with `init` keyword arguments (connection-typed ones may be given as
connection names) and called with the inputs; its optional `__aggregate__(line_results)` returns
the batch's metrics. Instances are reused per flow and `init`, like Prompt flow's workers do.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from forgeflow.errors import ForgeflowError, InvalidInput, NotFound, UpstreamError
from forgeflow.flows import compat
from forgeflow.flows.contract import (
    ANY,
    ConnectionProvider,
    Flow,
    FlowInput,
    FlowKind,
    FlowOutput,
    Reference,
    mapping,
    parse_input,
    resolve_inputs,
)
from forgeflow.flows.nodes.python import call_tool, connection_object, describe, import_file
from forgeflow.flows.nodes.requirements import check_requirements, environment_variables
from forgeflow.flows.result import FlowResult, RunStatus, settle
from forgeflow.flows.rules import parse_environment

FLEX_FILES = ("flow.flex.yaml", "flow.flex.yml")

_TYPES = {str: "string", int: "int", float: "double", bool: "bool", list: "list", dict: "object"}
_instances: dict[tuple, Any] = {}
_lock = threading.Lock()


@dataclasses.dataclass
class FlexSpec:
    module_path: Path
    attr: str
    init: dict[str, FlowInput]


def _module_path(flow_dir: Path, module: str, path: Path) -> Path:
    base = flow_dir.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise NotFound(f"{path.name}: entry module {module!r} not found in {flow_dir}", field="entry")


def _signature_inputs(func: Any, skip_self: bool) -> dict[str, FlowInput]:
    hints = describe(func)
    out = {}
    for name, p in hints.params.items():
        if p.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL) or (skip_self and name == "self"):
            continue
        annotation = p.annotation if p.annotation is not inspect.Parameter.empty else None
        inp = FlowInput(name=name, type=_TYPES.get(annotation, ANY) if isinstance(annotation, type) else ANY)
        if p.default is not inspect.Parameter.empty:
            inp.default = p.default
        out[name] = inp
    return out


def _entry(flow: Flow) -> Any:
    spec: FlexSpec = flow.spec
    module = import_file(spec.module_path, flow.import_roots, "entry")
    target = getattr(module, spec.attr, None)
    if target is None:
        raise NotFound(f"{flow.path.name}: entry {spec.attr!r} not found in {spec.module_path.name}", field="entry")
    return target


def load_flex(path: Path, raw: dict) -> Flow:
    """The Flow of a parsed `flow.flex.yaml`; inputs and init come from the YAML, else from the entry's signature."""
    flow_dir = path.parent.resolve()
    entry = raw.get("entry")
    if not isinstance(entry, str) or entry.count(":") != 1:
        raise InvalidInput(f"{path.name}: entry must be 'module:function' or 'module:Class', got {entry!r}", field="entry")
    module, attr = (s.strip() for s in entry.split(":"))
    variables, requirements, includes = parse_environment(raw, flow_dir, path)
    roots = (flow_dir, *dict.fromkeys(inc.parent for inc in includes))
    flow = Flow(flow_dir, path, {}, {}, {}, [], FlowKind.FLEX, variables, requirements, roots,
                FlexSpec(_module_path(flow_dir, module, path), attr, {}))
    target = _entry(flow)
    is_class = inspect.isclass(target)
    call = target.__call__ if is_class else target
    declared = mapping(raw.get("inputs"), "inputs")
    flow.inputs = ({str(k): parse_input(str(k), v, path) for k, v in declared.items()} if declared
                   else _signature_inputs(call, skip_self=is_class))
    declared_init = mapping(raw.get("init"), "init")
    flow.spec.init = ({str(k): parse_input(str(k), v, path) for k, v in declared_init.items()} if declared_init
                      else _signature_inputs(target.__init__, skip_self=True) if is_class else {})
    for name, out in mapping(raw.get("outputs"), "outputs").items():
        out = mapping(out, f"outputs.{name}")
        flow.outputs[str(name)] = FlowOutput(str(name), str(out.get("type", "string")), Reference("node", attr, (str(name),)),
                                             bool(out.get("is_chat_output", False)), str(out.get("description") or ""))
    return flow


def _instance(flow: Flow, init: dict | None, provider: ConnectionProvider | None) -> Any:
    target = _entry(flow)
    if not inspect.isclass(target):
        return target
    init = dict(init or {})
    key = (id(target), json.dumps(init, sort_keys=True, default=repr))
    obj = _instances.get(key)
    if obj is not None:
        return obj
    tool = describe(target.__init__)
    for name in tool.required:
        if name != "self" and name not in init and not (name in flow.spec.init and flow.spec.init[name].has_default):
            raise InvalidInput(f"{flow.path.name}: init needs {name!r} for {target.__name__}", field=f"init.{name}")
    for name, annotation in tool.connections.items():
        if name in init:
            init[name] = connection_object(flow.spec.attr, name, init[name], annotation, provider)
    try:
        obj = target(**init)
    except Exception as exc:
        err = UpstreamError(f"entry {target.__name__}(...) failed: {type(exc).__name__}: {exc}", field="init")
        err.details = traceback.format_exc()
        raise err from exc
    with _lock:
        _instances[key] = obj
    return obj


def _as_outputs(value: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return dict(value) if isinstance(value, dict) else {"output": value}


def run_flex(flow: Flow, inputs: dict, provider: ConnectionProvider | None, *, stream: bool,
             init: dict | None) -> FlowResult:
    """Call the entry (a class entry built with `init` first) with the inputs; a dict it returns is the outputs."""
    started = time.perf_counter()
    check_requirements(flow.requirements)
    resolved = resolve_inputs(flow, inputs)
    name = flow.spec.attr
    entry: dict[str, Any] = {"output": None, "status": RunStatus.RUNNING, "duration_s": 0.0, "error": None}
    result = FlowResult(outputs={}, node_results={name: entry}, duration_s=0.0, inputs=resolved)
    metrics, token = compat.start_metrics()
    try:
        with environment_variables(flow.environment_variables):
            target = _instance(flow, init, provider)
            node = type("EntryNode", (), {"name": name})
            try:
                out = call_tool(node, describe(target), dict(resolved), provider)
                out = settle(out, stream, lambda text: entry.__setitem__("output", text))
            except ForgeflowError:
                raise
            except Exception as exc:
                err = UpstreamError(f"entry {name!r} failed: {type(exc).__name__}: {exc}", field=name)
                err.details = traceback.format_exc()
                raise err from exc
        entry.update(output=out, status=RunStatus.COMPLETED)
        result.outputs = _as_outputs(out)
    except ForgeflowError as exc:
        entry.update(status=RunStatus.FAILED, error=getattr(exc, "details", None) or exc.message)
        result.status = RunStatus.FAILED
        exc.result = result  # type: ignore[attr-defined]
        raise
    finally:
        result.metrics = metrics
        compat.stop_metrics(token)
        entry["duration_s"] = result.duration_s = round(time.perf_counter() - started, 6)
    return result


def has_aggregate(flow: Flow) -> bool:
    """True when the entry is a class with an `__aggregate__` method."""
    target = _entry(flow)
    return inspect.isclass(target) and callable(getattr(target, "__aggregate__", None))


def aggregate(flow: Flow, lines: list[Any], provider: ConnectionProvider | None, init: dict | None = None) -> FlowResult:
    """Call `__aggregate__` with each line's entry output; its dict's numbers become metrics."""
    started = time.perf_counter()
    name = flow.spec.attr
    values = []
    for line in lines:
        nodes = line.get("node_results") if isinstance(line, dict) else line.node_results
        out = (nodes or {}).get(name, {}).get("output")
        values.append(getattr(out, "text", out))
    result = FlowResult(outputs={}, node_results={}, duration_s=0.0)
    if not has_aggregate(flow):
        return result
    obj = _instance(flow, init, provider)
    try:
        with environment_variables(flow.environment_variables):
            metrics = obj.__aggregate__(values)
    except Exception as exc:
        err = UpstreamError(f"{name}.__aggregate__ failed: {type(exc).__name__}: {exc}", field="__aggregate__")
        err.details = traceback.format_exc()
        raise err from exc
    result.outputs = dict(metrics) if isinstance(metrics, dict) else {"output": metrics}
    result.metrics = [{"key": k, "value": v, "variant_id": None} for k, v in result.outputs.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)]
    result.node_results = {"__aggregate__": {"output": metrics, "status": RunStatus.COMPLETED, "error": None,
                                             "duration_s": round(time.perf_counter() - started, 6)}}
    result.duration_s = round(time.perf_counter() - started, 6)
    return result
