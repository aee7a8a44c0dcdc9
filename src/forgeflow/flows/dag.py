"""A DAG flow: read `flow.dag.yaml` (also `flow.dag.yml`) into a validated `Flow` of nodes.

Errors name the node and field at fault; node references are checked and put in a run order here, so
the executor only follows them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from forgeflow.errors import InvalidInput, NotFound
from forgeflow.flows.contract import (
    Flow,
    FlowKind,
    FlowOutput,
    Node,
    Reference,
    mapping,
    parse_input,
    parse_reference,
)
from forgeflow.flows.rules import check_aggregation, check_chat_rules, parse_environment

DAG_FILES = ("flow.dag.yaml", "flow.dag.yml")
NODE_TYPES = ("python", "llm", "prompt")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def find_dag_file(flow_dir: Path) -> Path:
    """The DAG file of a flow folder (or the file itself when given one)."""
    flow_dir = Path(flow_dir)
    if flow_dir.is_file():
        return flow_dir
    for name in DAG_FILES:
        if (flow_dir / name).is_file():
            return flow_dir / name
    raise NotFound(f"no flow.dag.yaml in {flow_dir}: point --flow at a folder holding one")


def _number(raw: dict, key: str, where: str, cast: type, default: Any) -> Any:
    if raw.get(key) is None:
        return default
    try:
        value = cast(raw[key])
    except (TypeError, ValueError, OverflowError):
        value = -1
    if isinstance(raw[key], bool) or not 0 <= value < math.inf:  # NaN fails both comparisons
        raise InvalidInput(f"{where}: {key} must be a number >= 0 (not .nan or .inf), got {raw[key]!r}",
                           field=where.split("'")[1] + "." + key)
    return value


def _source_path(rel: str, flow_dir: Path, includes: tuple[Path, ...]) -> Path | None:
    """`rel` in the flow folder, else in an `additional_includes` entry (as if copied next to the flow)."""
    direct = (flow_dir / rel).resolve()
    if direct.is_file():
        return direct
    for inc in includes:
        candidate = inc if inc.name == rel else (inc.parent / rel).resolve()
        if candidate.is_file() and (candidate == inc or inc in candidate.parents):
            return candidate
    return None


def _parse_node(raw: Any, index: int, flow_dir: Path, path: Path, includes: tuple[Path, ...] = ()) -> Node:
    if not isinstance(raw, dict) or not raw.get("name"):
        raise InvalidInput(f"{path.name}: nodes[{index}] needs a name", field=f"nodes[{index}].name")
    name = str(raw["name"])
    where = f"{path.name}: node {name!r}"
    type_ = raw.get("type")
    if type_ not in NODE_TYPES:
        raise InvalidInput(f"{where}: type {type_!r} is not one of {', '.join(NODE_TYPES)}", field=f"{name}.type")
    source = mapping(raw.get("source"), f"{where}: source")
    if source.get("type", "code") != "code":
        raise InvalidInput(
            f"{where}: source.type {source.get('type')!r} is not supported yet (only 'code')", field=f"{name}.source"
        )
    if not source.get("path"):
        raise InvalidInput(f"{where}: source.path is required", field=f"{name}.source.path")
    source_path = _source_path(str(source["path"]), flow_dir, includes)
    if source_path is None:
        raise NotFound(f"{where}: source.path {source['path']!r} not found in {flow_dir}", field=f"{name}.source.path")
    inputs = {
        str(k): parse_reference(v, f"{name}.inputs.{k}") or v
        for k, v in mapping(raw.get("inputs"), f"{where}: inputs").items()
    }
    node = Node(
        name=name,
        type=type_,
        path=source_path,
        inputs=inputs,
        aggregation=bool(raw.get("aggregation")),
        connection=str(raw["connection"]) if raw.get("connection") else None,
        api=str(raw["api"]) if raw.get("api") else None,
        provider=str(raw["provider"]) if raw.get("provider") else None,
        timeout=_number(raw, "timeout", where, float, None) or None,
        retries=_number(raw, "retries", where, int, 0),
        retry_delay=_number(raw, "retry_delay", where, float, 1.0),
    )
    if type_ == "llm":
        if not node.connection:
            raise InvalidInput(f"{where}: an llm node needs a connection", field=f"{name}.connection")
        if (node.api or "chat") != "chat":
            raise InvalidInput(f"{where}: api {node.api!r} is not supported (only 'chat')", field=f"{name}.api")
    if raw.get("activate") is not None:
        activate = mapping(raw["activate"], f"{where}: activate")
        if "when" not in activate or "is" not in activate:
            raise InvalidInput(f"{where}: activate needs both 'when' and 'is'", field=f"{name}.activate")
        node.activate_when = parse_reference(activate["when"], f"{name}.activate.when")
        if node.activate_when is None:
            raise InvalidInput(f"{where}: activate.when must be a ${{...}} reference", field=f"{name}.activate.when")
        node.activate_is = activate["is"]
    return node


def _topological_order(nodes: dict[str, Node]) -> list[str]:
    deps = {n.name: [r.name for r in n.references() if r.kind == "node"] for n in nodes.values()}
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, chain: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = chain[chain.index(name):] + [name]
            raise InvalidInput(f"cycle between nodes: {' -> '.join(cycle)}", field=f"{name}.inputs")
        state[name] = 1
        for dep in deps[name]:
            visit(dep, chain + [name])
        state[name] = 2
        order.append(name)

    for name in nodes:
        visit(name, [])
    return order


def _check_reference(ref: Reference, where: str, flow_inputs: dict, nodes: dict) -> None:
    if ref.kind == "inputs" and ref.name not in flow_inputs:
        known = ", ".join(flow_inputs) or "none"
        raise InvalidInput(f"{where}: {ref} names unknown flow input {ref.name!r} (inputs: {known})", field=where)
    if ref.kind == "node" and ref.name not in nodes:
        known = ", ".join(nodes) or "none"
        raise InvalidInput(f"{where}: {ref} names unknown node {ref.name!r} (nodes: {known})", field=where)


def load_dag(path: Path, raw: dict) -> Flow:
    """The Flow of a parsed `flow.dag.yaml`."""
    flow_dir = path.parent.resolve()
    variables, requirements, includes = parse_environment(raw, flow_dir, path)
    flow_inputs = {str(k): parse_input(str(k), v, path) for k, v in mapping(raw.get("inputs"), "inputs").items()}
    for name in flow_inputs:
        if not _NAME.fullmatch(name):
            raise InvalidInput(f"{path.name}: input name {name!r} must be a Python identifier", field=f"inputs.{name}")
    raw_nodes = raw.get("nodes") or []
    if not isinstance(raw_nodes, list):
        raise InvalidInput(f"{path.name}: nodes must be a list", field="nodes")
    nodes: dict[str, Node] = {}
    for i, raw_node in enumerate(raw_nodes):
        node = _parse_node(raw_node, i, flow_dir, path, includes)
        if node.name in nodes:
            raise InvalidInput(f"{path.name}: duplicate node name {node.name!r}", field=f"nodes[{i}].name")
        nodes[node.name] = node
    for node in nodes.values():
        for key, value in node.inputs.items():
            if isinstance(value, Reference):
                _check_reference(value, f"node {node.name!r} input {key!r}", flow_inputs, nodes)
        if node.activate_when:
            _check_reference(node.activate_when, f"node {node.name!r} activate.when", flow_inputs, nodes)
    outputs: dict[str, FlowOutput] = {}
    for name, out in mapping(raw.get("outputs"), "outputs").items():
        out = mapping(out, f"outputs.{name}")
        ref = parse_reference(out.get("reference"), f"outputs.{name}.reference")
        if ref is None:
            raise InvalidInput(
                f"{path.name}: outputs.{name}.reference must be a ${{...}} reference", field=f"outputs.{name}.reference"
            )
        _check_reference(ref, f"output {name!r} reference", flow_inputs, nodes)
        outputs[str(name)] = FlowOutput(
            name=str(name),
            type=str(out.get("type", "string")),
            reference=ref,
            is_chat_output=bool(out.get("is_chat_output", False)),
            description=str(out.get("description") or ""),
        )
    check_aggregation(nodes, outputs)
    roots = (flow_dir, *dict.fromkeys(inc.parent for inc in includes))
    flow = Flow(flow_dir, path, flow_inputs, outputs, nodes, _topological_order(nodes), FlowKind.DAG, variables,
                requirements, roots)
    check_chat_rules(flow)
    return flow
