"""Load and validate a Prompt flow `flow.dag.yaml` (also `flow.dag.yml`), `flow.flex.yaml` or `.prompty`.

`load_flow` caches the parsed Flow by file path and mtime: batch runs and servers call it per
line, and re-parsing YAML there would dominate the engine's per-node cost.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from forgeflow.errors import InvalidInput, NotFound
from forgeflow.flows.rules import check_aggregation, check_chat_rules, parse_environment

DAG_FILES = ("flow.dag.yaml", "flow.dag.yml")
FLEX_FILES = ("flow.flex.yaml", "flow.flex.yml")
INPUT_TYPES = ("string", "int", "double", "bool", "list", "object")
ANY = "any"  # internal type of un-annotated flex inputs: no coercion
NODE_TYPES = ("python", "llm", "prompt")
_REF = re.compile(r"^\$\{([^{}]*)\}$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MISSING = object()


@dataclass(frozen=True)
class Reference:
    """`${inputs.x}` (kind "inputs") or `${node.output.field...}` (kind "node")."""

    kind: str
    name: str
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.kind == "inputs":
            return "${inputs.%s}" % self.name
        return "${%s}" % ".".join((self.name, "output", *self.fields))


@dataclass
class FlowInput:
    name: str
    type: str
    default: Any = _MISSING
    is_chat_input: bool = False
    is_chat_history: bool = False
    description: str = ""

    @property
    def has_default(self) -> bool:
        return self.default is not _MISSING

    @property
    def required(self) -> bool:
        return not self.has_default and not self.is_chat_history


@dataclass
class FlowOutput:
    name: str
    type: str
    reference: Reference
    is_chat_output: bool = False
    description: str = ""


@dataclass
class Node:
    name: str
    type: str
    path: Path | None
    inputs: dict[str, Any] = field(default_factory=dict)
    activate_when: Reference | None = None
    activate_is: Any = None
    aggregation: bool = False
    connection: str | None = None
    api: str | None = None
    provider: str | None = None
    timeout: float | None = None
    retries: int = 0
    retry_delay: float = 1.0

    def references(self) -> list[Reference]:
        refs = [v for v in self.inputs.values() if isinstance(v, Reference)]
        return refs + ([self.activate_when] if self.activate_when else [])


@dataclass
class Flow:
    """A validated flow; `order` lists node names in an order that respects dependencies."""

    dir: Path
    path: Path
    inputs: dict[str, FlowInput]
    outputs: dict[str, FlowOutput]
    nodes: dict[str, Node]
    order: list[str]
    kind: str = "dag"
    environment_variables: dict[str, str] = field(default_factory=dict)
    requirements: Path | None = None
    import_roots: tuple[Path, ...] = ()
    spec: Any = None  # flex / prompty details
    consumed: frozenset[str] = frozenset()  # nodes whose output another node reads
    deps: dict[str, frozenset[str]] = field(default_factory=dict)  # node -> nodes it reads

    def __post_init__(self) -> None:
        if not self.import_roots:
            self.import_roots = (self.dir,)
        self.deps = {
            n.name: frozenset(r.name for r in n.references() if r.kind == "node") for n in self.nodes.values()
        }
        self.consumed = frozenset(d for deps in self.deps.values() for d in deps)


def find_dag_file(flow_dir: Path) -> Path:
    """The DAG file of a flow folder (or the file itself when given one)."""
    flow_dir = Path(flow_dir)
    if flow_dir.is_file():
        return flow_dir
    for name in DAG_FILES:
        if (flow_dir / name).is_file():
            return flow_dir / name
    raise NotFound(f"no flow.dag.yaml in {flow_dir}: point --flow at a folder holding one")


def parse_reference(value: Any, where: str) -> Reference | None:
    """A Reference when `value` is exactly `${...}`, else None (a literal)."""
    if not isinstance(value, str):
        return None
    m = _REF.match(value.strip())
    if not m:
        return None
    parts = [p.strip() for p in m.group(1).split(".")]
    if len(parts) == 2 and parts[0] == "inputs" and parts[1]:
        return Reference("inputs", parts[1])
    if len(parts) >= 2 and parts[0] and parts[1] == "output" and all(parts[2:]):
        return Reference("node", parts[0], tuple(parts[2:]))
    raise InvalidInput(
        f"{where}: bad reference {value!r}; use ${{inputs.<name>}} or ${{<node>.output[.<field>...]}}",
        field=where,
    )


def coerce_value(value: Any, type_: str, where: str) -> Any:
    """Convert `value` to a flow input type, or raise InvalidInput naming `where`."""

    def bad() -> InvalidInput:
        return InvalidInput(f"{where}: expected {type_}, got {type(value).__name__} {value!r}", field=where)

    if type_ == ANY:
        return value
    if type_ == "string":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise bad()
        return str(value)
    if type_ == "int":
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad() from None
        raise bad()
    if type_ == "double":
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise bad() from None
        raise bad()
    if type_ == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.strip().lower() in ("true", "1", "yes")
        raise bad()
    expected = list if type_ == "list" else dict
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise bad() from None
    if not isinstance(value, expected):
        raise bad()
    return value


def _mapping(raw: Any, where: str) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where} must be a mapping, got {type(raw).__name__}", field=where)
    return raw


def _parse_input(name: str, raw: Any, path: Path) -> FlowInput:
    where = f"inputs.{name}"
    raw = _mapping(raw, f"{path.name}: {where}")
    type_ = raw.get("type", "string")
    if type_ not in INPUT_TYPES:
        raise InvalidInput(f"{path.name}: {where}.type {type_!r} is not one of {', '.join(INPUT_TYPES)}", field=where)
    inp = FlowInput(
        name=name,
        type=type_,
        is_chat_input=bool(raw.get("is_chat_input", False)),
        is_chat_history=bool(raw.get("is_chat_history", False)),
        description=str(raw.get("description") or ""),
    )
    if "default" in raw:
        inp.default = coerce_value(raw["default"], type_, f"{path.name}: {where}.default")
    return inp


def _number(raw: dict, key: str, where: str, cast: type, default: Any) -> Any:
    if raw.get(key) is None:
        return default
    try:
        value = cast(raw[key])
    except (TypeError, ValueError):
        value = -1
    if isinstance(raw[key], bool) or value < 0:
        raise InvalidInput(f"{where}: {key} must be a number >= 0, got {raw[key]!r}", field=where.split("'")[1] + "." + key)
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
    source = _mapping(raw.get("source"), f"{where}: source")
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
        for k, v in _mapping(raw.get("inputs"), f"{where}: inputs").items()
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
        activate = _mapping(raw["activate"], f"{where}: activate")
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


def _load_dag(path: Path, raw: dict) -> Flow:
    flow_dir = path.parent.resolve()
    variables, requirements, includes = parse_environment(raw, flow_dir, path)
    flow_inputs = {str(k): _parse_input(str(k), v, path) for k, v in _mapping(raw.get("inputs"), "inputs").items()}
    for name in flow_inputs:
        if not _NAME.match(name):
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
    for name, out in _mapping(raw.get("outputs"), "outputs").items():
        out = _mapping(out, f"outputs.{name}")
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
    flow = Flow(flow_dir, path, flow_inputs, outputs, nodes, _topological_order(nodes), "dag", variables, requirements, roots)
    check_chat_rules(flow)
    return flow


def read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path}: not valid YAML: {exc}") from None
    return _mapping(raw, path.name)


_cache: dict[Path, tuple[int, Flow]] = {}
_cache_lock = threading.Lock()
_paths: dict[str, Path] = {}  # as given -> resolved flow file (resolving costs more than the run)


def flow_file(target: Path) -> Path:
    """The file that defines a flow: the file given, a flex flow's YAML, or flow.dag.yaml."""
    if target.is_file():
        return target.resolve()
    for name in FLEX_FILES:
        if (target / name).is_file():
            return (target / name).resolve()
    return find_dag_file(target).resolve()


def load_flow(flow_dir: Path | str | Flow) -> Flow:
    """Read and validate a flow (folder, DAG/flex YAML, or .prompty); errors name the node and field at fault.

    The result is cached until the file's mtime changes; treat it as read-only.
    """
    if isinstance(flow_dir, Flow):
        return flow_dir
    key = str(flow_dir) if Path(flow_dir).is_absolute() else f"{os.getcwd()}|{flow_dir}"
    path = _paths.get(key)
    try:
        mtime = path.stat().st_mtime_ns if path is not None else None
    except OSError:
        mtime = None
    if mtime is None:
        path = flow_file(Path(flow_dir))
        mtime = path.stat().st_mtime_ns
        _paths[key] = path
    hit = _cache.get(path)
    if hit is not None and hit[0] == mtime:
        return hit[1]
    if path.suffix == ".prompty":
        from forgeflow.flows.nodes.prompty import load_prompty

        flow = load_prompty(path)
    elif path.name in FLEX_FILES:
        from forgeflow.flows.nodes.flex import load_flex

        flow = load_flex(path, read_yaml(path))
    else:
        flow = _load_dag(path, read_yaml(path))
    with _cache_lock:
        _cache[path] = (mtime, flow)
    return flow


def chat_input_name(flow: Flow) -> str | None:
    """Name of the input marked `is_chat_input`, if any."""
    return next((i.name for i in flow.inputs.values() if i.is_chat_input), None)


def chat_history_name(flow: Flow) -> str | None:
    """Name of the input marked `is_chat_history`; else, as Prompt flow infers, a list input named chat_history."""
    marked = next((i.name for i in flow.inputs.values() if i.is_chat_history), None)
    if marked is None and chat_input_name(flow) is not None:
        inp = flow.inputs.get("chat_history")
        if inp is not None and inp.type in ("list", ANY):
            return inp.name
    return marked


def chat_output_name(flow: Flow) -> str | None:
    """Name of the output marked `is_chat_output`, if any."""
    return next((o.name for o in flow.outputs.values() if o.is_chat_output), None)
