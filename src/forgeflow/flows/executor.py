"""Run a Prompt flow DAG: resolve inputs and references, call each node's tool in order."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import os
import sys
import time
import traceback
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from typing import Any

from forgeflow.errors import ForgeflowError, InvalidInput, NotFound, UpstreamError
from forgeflow.flows import compat
from forgeflow.flows.dag import Flow, Node, Reference, coerce_value, load_flow

ConnectionProvider = Callable[[str], dict]
_counter = itertools.count()


@dataclass
class FlowResult:
    """Outcome of one flow run (or one single-node run)."""

    outputs: dict[str, Any]
    node_results: dict[str, dict[str, Any]]
    duration_s: float
    inputs: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    status: str = "Completed"
    node: str | None = None


def resolve_inputs(flow: Flow, inputs: dict[str, Any]) -> dict[str, Any]:
    """Apply defaults and coerce types; chat history defaults to []."""
    unknown = sorted(set(inputs) - set(flow.inputs))
    if unknown:
        raise InvalidInput(
            f"unknown flow input {unknown[0]!r}; the flow takes: {', '.join(flow.inputs) or 'no inputs'}",
            field=unknown[0],
        )
    resolved = {}
    for name, spec in flow.inputs.items():
        if name in inputs:
            resolved[name] = coerce_value(inputs[name], spec.type, f"input {name!r}")
        elif spec.has_default:
            resolved[name] = spec.default
        elif spec.is_chat_history:
            resolved[name] = []
        else:
            raise InvalidInput(f"missing required flow input {name!r} (type {spec.type})", field=name)
    return resolved


def _select(value: Any, ref: Reference, where: str) -> Any:
    for key in ref.fields:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, (list, tuple)) and key.lstrip("-").isdigit() and -len(value) <= int(key) < len(value):
            value = value[int(key)]
        elif value is not None and not isinstance(value, (dict, list, tuple)) and hasattr(value, key):
            value = getattr(value, key)
        else:
            raise InvalidInput(f"{where}: {ref} has no field {key!r} in {value!r:.200}", field=where)
    return value


def _import_tool(flow: Flow, node: Node) -> Callable:
    """Import the node's module afresh, with the flow folder on sys.path, and return its tool."""
    assert node.path is not None
    compat.install_promptflow_shim()
    flow_dir = str(flow.dir)
    mod_name = f"_forgeflow_tool_{node.path.stem}_{next(_counter)}"
    before = set(sys.modules)
    sys.path.insert(0, flow_dir)
    try:
        spec = spec_from_file_location(mod_name, node.path)
        assert spec is not None and spec.loader is not None
        module = module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
    except ForgeflowError:
        raise
    except BaseException as exc:
        err = UpstreamError(f"node {node.name!r}: importing {node.path.name} failed: {exc!r}", field=node.name)
        err.details = traceback.format_exc()
        raise err from exc
    finally:
        if flow_dir in sys.path:
            sys.path.remove(flow_dir)
        for name in set(sys.modules) - before:
            mod_file = getattr(sys.modules[name], "__file__", None) or ""
            if name == mod_name or mod_file.startswith(flow_dir + os.sep):
                del sys.modules[name]
    tools = [obj for obj in vars(module).values() if compat.is_tool(obj)]
    own = [t for t in tools if getattr(t, "__module__", None) == mod_name]
    tools = own or tools
    if len(tools) != 1:
        found = ", ".join(getattr(t, "__name__", "?") for t in tools) if tools else "none"
        raise InvalidInput(
            f"node {node.name!r}: {node.path.name} must have exactly one function decorated with @tool (found {found})",
            field=f"{node.name}.source.path",
        )
    return tools[0]


def _is_connection_type(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return annotation.rsplit(".", 1)[-1] == "CustomConnection"
    if annotation is compat.CustomConnection:
        return True
    return (
        isinstance(annotation, type)
        and annotation.__name__ == "CustomConnection"
        and annotation.__module__.startswith("promptflow")
    )


def _annotations(func: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func)
    except Exception:
        return {k: p.annotation for k, p in inspect.signature(func).parameters.items()}


def _connection(
    node: Node, param: str, value: Any, annotation: Any, provider: ConnectionProvider | None
) -> Any:
    if not isinstance(value, str):
        return value
    hint = f"create it with: forgeflow connection create --name {value} ..."
    if provider is None:
        raise NotFound(f"node {node.name!r}: connection {value!r} not found (no connection store); {hint}", field=param)
    try:
        found = provider(value)
    except NotFound as exc:
        raise NotFound(f"node {node.name!r}: connection {value!r} not found: {exc.message}; {hint}", field=param) from exc
    except KeyError:
        found = None
    if not found:
        raise NotFound(f"node {node.name!r}: connection {value!r} not found; {hint}", field=param)
    cls = annotation if isinstance(annotation, type) else compat.CustomConnection
    configs, secrets = dict(found.get("configs") or {}), dict(found.get("secrets") or {})
    name = found.get("name") or value
    if cls is compat.CustomConnection:
        return cls(configs=configs, secrets=secrets, name=name)
    return cls(secrets=secrets, configs=configs, name=name)


def _call_tool(node: Node, func: Callable, kwargs: dict[str, Any], provider: ConnectionProvider | None) -> Any:
    params = inspect.signature(func).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in kwargs:
        if key not in params and not takes_kwargs:
            raise InvalidInput(
                f"node {node.name!r}: input {key!r} is not a parameter of {func.__name__}({', '.join(params)})",
                field=f"{node.name}.inputs.{key}",
            )
    for key, p in params.items():
        if p.default is inspect.Parameter.empty and key not in kwargs and p.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        ):
            raise InvalidInput(
                f"node {node.name!r}: missing input {key!r} for {func.__name__}", field=f"{node.name}.inputs.{key}"
            )
    hints = _annotations(func)
    for key, value in list(kwargs.items()):
        if _is_connection_type(hints.get(key)):
            kwargs[key] = _connection(node, key, value, hints.get(key), provider)
    try:
        result = func(**kwargs)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
        if isinstance(result, types.GeneratorType):
            items = list(result)
            result = "".join(items) if all(isinstance(i, str) for i in items) else items
        return result
    except Exception as exc:
        err = UpstreamError(f"node {node.name!r} failed: {type(exc).__name__}: {exc}", field=node.name)
        err.details = traceback.format_exc()
        raise err from exc


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _check_supported(flow: Flow, names: list[str]) -> None:
    for name in names:
        node = flow.nodes[name]
        if node.type != "python":
            raise InvalidInput(
                f"node {name!r}: type {node.type!r} is not supported yet (only python nodes run today)",
                field=f"{name}.type",
            )
        if node.aggregation:
            raise InvalidInput(f"node {name!r}: aggregation nodes are not supported yet", field=f"{name}.aggregation")


def _single_node_inputs(flow: Flow, node: Node, given: dict[str, Any]) -> dict[str, Any]:
    kwargs = {}
    for key, value in node.inputs.items():
        if not isinstance(value, Reference):
            kwargs[key] = given.get(key, value)
            continue
        expr = str(value)[2:-1]
        for candidate in (key, expr, value.name if value.kind == "inputs" else None):
            if candidate is not None and candidate in given:
                kwargs[key] = given[candidate]
                break
        else:
            spec = flow.inputs.get(value.name) if value.kind == "inputs" else None
            if spec is not None and spec.has_default:
                kwargs[key] = spec.default
            elif spec is not None and spec.is_chat_history:
                kwargs[key] = []
            else:
                raise InvalidInput(f"node {node.name!r}: input {key!r} ({value}) was not given", field=key)
        if value.kind == "inputs":
            kwargs[key] = coerce_value(kwargs[key], flow.inputs[value.name].type, f"input {key!r}")
    return kwargs


def _fail(exc: ForgeflowError, result: FlowResult) -> None:
    result.status = "Failed"
    exc.result = result


def run_flow(
    flow_dir: Path,
    inputs: dict[str, Any],
    *,
    connection_provider: ConnectionProvider | None = None,
    node: str | None = None,
) -> FlowResult:
    """Run a flow (or one node of it, like `pf flow test --node`) and return its results.

    On failure the raised error carries `.result` (the partial FlowResult) and, for tool
    errors, `.details` (the traceback).
    """
    started = time.perf_counter()
    flow = load_flow(flow_dir)
    if node is not None and node not in flow.nodes:
        raise NotFound(f"no node {node!r} in {flow.path.name} (nodes: {', '.join(flow.nodes)})", field="node")
    names = [node] if node is not None else flow.order
    _check_supported(flow, names)
    resolved = dict(inputs) if node is not None else resolve_inputs(flow, inputs)
    result = FlowResult(outputs={}, node_results={}, duration_s=0.0, inputs=resolved, node=node)
    outputs: dict[str, Any] = {}
    bypassed: set[str] = set()

    def value_of(ref: Reference, where: str) -> Any:
        if ref.kind == "inputs":
            return resolved[ref.name]
        if ref.name in bypassed:
            return None
        return _select(outputs[ref.name], ref, where)

    metrics, token = compat.start_metrics()
    try:
        for name in names:
            current = flow.nodes[name]
            t0 = time.perf_counter()
            entry: dict[str, Any] = {"output": None, "status": "Running", "duration_s": 0.0, "error": None}
            result.node_results[name] = entry
            try:
                if node is None and _is_bypassed(current, bypassed, value_of):
                    bypassed.add(name)
                    entry.update(status="Bypassed")
                    continue
                if node is None:
                    kwargs = {
                        k: value_of(v, f"node {name!r} input {k!r}") if isinstance(v, Reference) else v
                        for k, v in current.inputs.items()
                    }
                else:
                    kwargs = _single_node_inputs(flow, current, resolved)
                func = _import_tool(flow, current)
                outputs[name] = _call_tool(current, func, kwargs, connection_provider)
                entry.update(output=outputs[name], status="Completed")
            except ForgeflowError as exc:
                entry.update(status="Failed", error=getattr(exc, "details", None) or exc.message)
                raise
            finally:
                entry["duration_s"] = round(time.perf_counter() - t0, 6)
                result.duration_s = round(time.perf_counter() - started, 6)
        if node is not None:
            result.outputs = {node: outputs[node]}
        else:
            result.outputs = {
                out.name: value_of(out.reference, f"output {out.name!r}") for out in flow.outputs.values()
            }
    except ForgeflowError as exc:
        _fail(exc, result)
        raise
    finally:
        result.metrics = metrics
        compat.stop_metrics(token)
        result.duration_s = round(time.perf_counter() - started, 6)
    return result


def _is_bypassed(node: Node, bypassed: set[str], value_of: Callable[[Reference, str], Any]) -> bool:
    """Prompt flow's rule: skip when `activate` is unmet or every upstream node was skipped."""
    if node.activate_when is not None:
        when = node.activate_when
        if when.kind == "node" and when.name in bypassed:
            return True
        if value_of(when, f"node {node.name!r} activate.when") != node.activate_is:
            return True
    upstream = {v.name for v in node.inputs.values() if isinstance(v, Reference) and v.kind == "node"}
    return bool(upstream) and upstream <= bypassed


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


def write_details(flow_dir: Path, result: FlowResult) -> Path:
    """Write a run's inputs, outputs, node results and timings to `.forgeflow/runs/<ts>/details.json`."""
    runs = Path(flow_dir).resolve()
    if runs.is_file():
        runs = runs.parent
    runs = runs / ".forgeflow" / "runs"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S_%fZ")
    run_dir = runs / stamp
    for n in itertools.count(1):
        try:
            run_dir.mkdir(parents=True)
            break
        except FileExistsError:
            run_dir = runs / f"{stamp}-{n}"
    path = run_dir / "details.json"
    body = {"run": run_dir.name, **asdict(result)}
    path.write_text(json.dumps(_jsonable(body), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
