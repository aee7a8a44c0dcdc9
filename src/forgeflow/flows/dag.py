"""A DAG flow: read `flow.dag.yaml` (also `flow.dag.yml`) into a validated `Flow` of nodes.

Errors name the node and field at fault; node references are checked and put in a run order here, so
the executor only follows them. A node with `use_variants: true` takes its definition from `node_variants`
(Prompt flow's prompt tuning): its default variant, or the one `pick_variant` puts in place for a run.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from forgeflow.errors import InvalidInput, NotFound
from forgeflow.flows.contract import (
    Flow,
    FlowKind,
    FlowOutput,
    Node,
    NodeVariants,
    Reference,
    mapping,
    parse_input,
    parse_reference,
    parse_variant,
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


def _number(raw: dict, key: str, where: str, cast: type, default: Any, at: str) -> Any:
    if raw.get(key) is None:
        return default
    try:
        value = cast(raw[key])
    except (TypeError, ValueError, OverflowError):
        value = -1
    if isinstance(raw[key], bool) or not 0 <= value < math.inf:  # NaN fails both comparisons
        raise InvalidInput(f"{where}: {key} must be a number >= 0 (not .nan or .inf), got {raw[key]!r}",
                           field=f"{at}.{key}")
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


def _parse_node(raw: Any, index: int, flow_dir: Path, path: Path, includes: tuple[Path, ...] = (), *,
                at: str | None = None, label: str | None = None) -> Node:
    """A node's definition; `at` prefixes the field names errors give (a variant's `node_variants.N.variants.V.node`)
    and `label` names it in messages."""
    if not isinstance(raw, dict) or not raw.get("name"):
        raise InvalidInput(f"{path.name}: nodes[{index}] needs a name", field=f"nodes[{index}].name")
    name = str(raw["name"])
    at = at or name
    where = f"{path.name}: {label or f'node {name!r}'}"
    type_ = raw.get("type")
    if type_ not in NODE_TYPES:
        raise InvalidInput(f"{where}: type {type_!r} is not one of {', '.join(NODE_TYPES)}", field=f"{at}.type")
    source = mapping(raw.get("source"), f"{where}: source")
    if source.get("type", "code") != "code":
        raise InvalidInput(
            f"{where}: source.type {source.get('type')!r} is not supported yet (only 'code')", field=f"{at}.source"
        )
    if not source.get("path"):
        raise InvalidInput(f"{where}: source.path is required", field=f"{at}.source.path")
    source_path = _source_path(str(source["path"]), flow_dir, includes)
    if source_path is None:
        raise NotFound(f"{where}: source.path {source['path']!r} not found in {flow_dir}", field=f"{at}.source.path")
    inputs = {
        str(k): parse_reference(v, f"{at}.inputs.{k}") or v
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
        timeout=_number(raw, "timeout", where, float, None, at) or None,
        retries=_number(raw, "retries", where, int, 0, at),
        retry_delay=_number(raw, "retry_delay", where, float, 1.0, at),
    )
    if type_ == "llm":
        if not node.connection:
            raise InvalidInput(f"{where}: an llm node needs a connection", field=f"{at}.connection")
        if (node.api or "chat") != "chat":
            raise InvalidInput(f"{where}: api {node.api!r} is not supported (only 'chat')", field=f"{at}.api")
    if raw.get("activate") is not None:
        activate = mapping(raw["activate"], f"{where}: activate")
        if "when" not in activate or "is" not in activate:
            raise InvalidInput(f"{where}: activate needs both 'when' and 'is'", field=f"{at}.activate")
        node.activate_when = parse_reference(activate["when"], f"{at}.activate.when")
        if node.activate_when is None:
            raise InvalidInput(f"{where}: activate.when must be a ${{...}} reference", field=f"{at}.activate.when")
        node.activate_is = activate["is"]
    return node


def _uses_variants(raw: Any, index: int, path: Path) -> bool:
    flag = raw.get("use_variants") if isinstance(raw, dict) else None
    if flag is not None and not isinstance(flag, bool):
        raise InvalidInput(f"{path.name}: nodes[{index}].use_variants must be true or false, got {flag!r}",
                           field=f"nodes[{index}].use_variants")
    return bool(flag) and bool(raw.get("name"))


def _parse_variants(name: str, index: int, all_variants: dict, flow_dir: Path, path: Path,
                    includes: tuple[Path, ...]) -> NodeVariants:
    """Prompt flow's `node_variants.<name>`: each variant a whole node definition that takes the node's name.

    As in Prompt flow, whatever else the `use_variants` node itself says is replaced by the variant's definition.
    """
    at = f"node_variants.{name}"
    if name not in all_variants:
        raise InvalidInput(f"{path.name}: node {name!r} sets use_variants: true but node_variants has no entry "
                           f"{name!r}: add {at} with its variants and default_variant_id", field=at)
    spec = mapping(all_variants[name], f"{path.name}: {at}")
    listed = mapping(spec.get("variants"), f"{path.name}: {at}.variants")
    if not listed:
        raise InvalidInput(f"{path.name}: {at}.variants lists no variant of node {name!r}", field=f"{at}.variants")
    default = spec.get("default_variant_id")
    if default is None or str(default) not in {str(v) for v in listed}:
        raise InvalidInput(f"{path.name}: {at}.default_variant_id {default!r} names no variant of node {name!r} "
                           f"(variants: {', '.join(map(str, listed))})", field=f"{at}.default_variant_id")
    variants: dict[str, Node] = {}
    for variant_id, body in listed.items():
        variant_id = str(variant_id)
        vat = f"{at}.variants.{variant_id}"
        node_raw = mapping(mapping(body, f"{path.name}: {vat}").get("node"), f"{path.name}: {vat}.node")
        if not node_raw:
            raise InvalidInput(f"{path.name}: {vat}.node is missing: give the variant's type, source and inputs",
                               field=f"{vat}.node")
        if node_raw.get("name") not in (None, name):
            raise InvalidInput(f"{path.name}: {vat}.node.name {node_raw['name']!r}: a variant takes its node's name "
                               f"({name!r}); remove the name", field=f"{vat}.node.name")
        node = _parse_node({**node_raw, "name": name}, index, flow_dir, path, includes, at=f"{vat}.node",
                           label=f"node {name!r} variant {variant_id!r}")
        node.variant = variant_id
        variants[variant_id] = node
    return NodeVariants(str(default), variants)


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


def _checked(flow: Flow) -> Flow:
    """Check every reference and the aggregation rules, and put the nodes in run order."""
    for node in flow.nodes.values():
        label = f"node {node.name!r}" + (f" variant {node.variant!r}" if node.variant else "")
        for key, value in node.inputs.items():
            if isinstance(value, Reference):
                _check_reference(value, f"{label} input {key!r}", flow.inputs, flow.nodes)
        if node.activate_when:
            _check_reference(node.activate_when, f"{label} activate.when", flow.inputs, flow.nodes)
    for out in flow.outputs.values():
        _check_reference(out.reference, f"output {out.name!r} reference", flow.inputs, flow.nodes)
    check_aggregation(flow.nodes, flow.outputs)
    flow.order = _topological_order(flow.nodes)
    return flow


def pick_variant(flow: Flow, spec: str) -> Flow:
    """The flow run with one node's variant in place of its default: Prompt flow's `--variant ${node.variant_id}`.

    An unknown node or variant id is InvalidInput naming it and listing what there is.
    """
    name, variant_id = parse_variant(spec)
    shown = "${%s.%s}" % (name, variant_id)
    if flow.kind != FlowKind.DAG:
        raise InvalidInput(f"variant {shown}: only a DAG flow (flow.dag.yaml) has node variants; {flow.path.name} "
                           f"is a {flow.kind} flow", field="variant")
    choices = flow.node_variants.get(name)
    if choices is None:
        having = ", ".join(flow.node_variants) or "none"
        if name in flow.nodes:
            raise InvalidInput(f"variant {shown}: node {name!r} has no variants (it does not set use_variants: true); "
                               f"nodes with variants: {having}", field="variant")
        raise InvalidInput(f"variant {shown}: {flow.path.name} has no node {name!r}; nodes with variants: {having}",
                           field="variant")
    if variant_id not in choices.variants:
        raise InvalidInput(f"variant {shown}: node {name!r} has no variant {variant_id!r} (variants: "
                           f"{', '.join(choices.variants)})", field="variant")
    nodes = {**flow.nodes, name: choices.variants[variant_id]}
    return _checked(replace(flow, nodes=nodes, order=[], variant=(name, variant_id)))


def load_dag(path: Path, raw: dict) -> Flow:
    """The Flow of a parsed `flow.dag.yaml`, every node with variants at its default variant."""
    flow_dir = path.parent.resolve()
    variables, requirements, includes = parse_environment(raw, flow_dir, path)
    flow_inputs = {str(k): parse_input(str(k), v, path) for k, v in mapping(raw.get("inputs"), "inputs").items()}
    for name in flow_inputs:
        if not _NAME.fullmatch(name):
            raise InvalidInput(f"{path.name}: input name {name!r} must be a Python identifier", field=f"inputs.{name}")
    raw_nodes = raw.get("nodes") or []
    if not isinstance(raw_nodes, list):
        raise InvalidInput(f"{path.name}: nodes must be a list", field="nodes")
    all_variants = {str(k): v for k, v in mapping(raw.get("node_variants"), f"{path.name}: node_variants").items()}
    nodes: dict[str, Node] = {}
    node_variants: dict[str, NodeVariants] = {}
    for i, raw_node in enumerate(raw_nodes):
        if _uses_variants(raw_node, i, path):
            name = str(raw_node["name"])
            choices = node_variants[name] = _parse_variants(name, i, all_variants, flow_dir, path, includes)
            node = choices.variants[choices.default]
        else:
            node = _parse_node(raw_node, i, flow_dir, path, includes)
        if node.name in nodes:
            raise InvalidInput(f"{path.name}: duplicate node name {node.name!r}", field=f"nodes[{i}].name")
        nodes[node.name] = node
    outputs: dict[str, FlowOutput] = {}
    for name, out in mapping(raw.get("outputs"), "outputs").items():
        out = mapping(out, f"outputs.{name}")
        ref = parse_reference(out.get("reference"), f"outputs.{name}.reference")
        if ref is None:
            raise InvalidInput(
                f"{path.name}: outputs.{name}.reference must be a ${{...}} reference", field=f"outputs.{name}.reference"
            )
        outputs[str(name)] = FlowOutput(
            name=str(name),
            type=str(out.get("type", "string")),
            reference=ref,
            is_chat_output=bool(out.get("is_chat_output", False)),
            description=str(out.get("description") or ""),
        )
    roots = (flow_dir, *dict.fromkeys(inc.parent for inc in includes))
    flow = _checked(Flow(flow_dir, path, flow_inputs, outputs, nodes, [], FlowKind.DAG, variables, requirements,
                         roots, node_variants=node_variants))
    check_chat_rules(flow)
    for name, choices in node_variants.items():  # a broken variant fails when the flow loads, not when picked
        for variant_id in choices.variants:
            if variant_id != choices.default:
                pick_variant(flow, "${%s.%s}" % (name, variant_id))
    return flow
