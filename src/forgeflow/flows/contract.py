"""What a flow is, whatever file it came from: inputs, outputs, nodes, references and value types.

The data model only: `dag`, `flex` and `prompty` build a `Flow` from their files, the executor runs
it. Like Prompt flow's `contracts/flow.py`, nothing here reads files or runs code.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from forgeflow.errors import InvalidInput

INPUT_TYPES = ("string", "int", "double", "bool", "list", "object")
ANY = "any"  # internal type of un-annotated flex inputs: no coercion
_REF = re.compile(r"\$\{([^{}]*)\}")
_VARIANT = re.compile(r"\$\{\s*([^.{}\s]+)\.([^{}\s]+)\s*\}")
_MISSING = object()
_REPR = reprlib.Repr()  # a wrong value as an error message shows it: never the whole of a huge one
_REPR.maxstring = _REPR.maxother = 80

# How a run finds a connection by name: {name, type, configs, secrets}, secrets decrypted. The caller
# passes it in; the flow engine never decides where connections are stored.
ConnectionProvider = Callable[[str], dict]


class FlowKind(StrEnum):
    """The file a flow is defined by: a DAG of nodes, a flex entry (Python callable), or a .prompty file."""

    DAG = "dag"
    FLEX = "flex"
    PROMPTY = "prompty"


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
    variant: str | None = None  # the variant id this definition came from (`node_variants`), if any

    def references(self) -> list[Reference]:
        refs = [v for v in self.inputs.values() if isinstance(v, Reference)]
        return refs + ([self.activate_when] if self.activate_when else [])


@dataclass
class NodeVariants:
    """A node's variants (`node_variants.<node>` of a DAG): each a whole definition of the node, keyed by variant id.

    The node itself only says `use_variants: true`; `default` runs unless a run picks another (`${node.variant}`).
    """

    default: str
    variants: dict[str, Node]


@dataclass
class Flow:
    """A validated flow; `order` lists node names in an order that respects dependencies."""

    dir: Path
    path: Path
    inputs: dict[str, FlowInput]
    outputs: dict[str, FlowOutput]
    nodes: dict[str, Node]
    order: list[str]
    kind: FlowKind = FlowKind.DAG
    environment_variables: dict[str, str] = field(default_factory=dict)
    requirements: Path | None = None
    import_roots: tuple[Path, ...] = ()
    spec: Any = None  # what a flex or prompty flow needs to run (its FlexSpec / PromptySpec)
    consumed: frozenset[str] = frozenset()  # nodes whose output another node reads
    deps: dict[str, frozenset[str]] = field(default_factory=dict)  # node -> nodes it reads
    node_variants: dict[str, NodeVariants] = field(default_factory=dict)  # nodes with `use_variants: true`
    variant: tuple[str, str] | None = None  # (node, variant id) a run picked; None: every node's default

    def __post_init__(self) -> None:
        if not self.import_roots:
            self.import_roots = (self.dir,)
        self.deps = {
            n.name: frozenset(r.name for r in n.references() if r.kind == "node") for n in self.nodes.values()
        }
        self.consumed = frozenset(d for deps in self.deps.values() for d in deps)


def mapping(raw: Any, where: str) -> dict:
    """`raw` when it is a mapping, {} when absent, else InvalidInput naming `where`."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where} must be a mapping, got {type(raw).__name__}", field=where)
    return raw


def parse_reference(value: Any, where: str) -> Reference | None:
    """A Reference when `value` is exactly `${...}`, else None (a literal)."""
    if not isinstance(value, str):
        return None
    m = _REF.fullmatch(value.strip())
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


def parse_variant(spec: str) -> tuple[str, str]:
    """(node, variant id) of Prompt flow's `${node.variant_id}` (quotes around it allowed), else InvalidInput."""
    text = str(spec).strip().strip("'\"")
    m = _VARIANT.fullmatch(text)
    if not m:
        raise InvalidInput(f"variant {spec!r}: write ${{NODE.VARIANT_ID}}, e.g. '${{chat.variant_1}}'", field="variant")
    return m.group(1), m.group(2)


def variant_label(flow: Flow) -> str | None:
    """The `${node.variant_id}` a flow runs with, or None when every node runs its default."""
    return "${%s.%s}" % flow.variant if flow.variant else None


def coerce_value(value: Any, type_: str, where: str) -> Any:
    """Convert `value` to a flow input type, or raise InvalidInput naming `where`."""

    def bad(expected: str = type_) -> InvalidInput:
        return InvalidInput(f"{where}: expected {expected}, got {type(value).__name__} {_REPR.repr(value)}",
                            field=where)

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
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError, OverflowError):
            raise bad() from None
        if not math.isfinite(number):  # NaN and infinities have no JSON form and compare as nothing else does
            raise bad("a finite double")
        return number
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
        except (ValueError, RecursionError):
            raise bad() from None
    if not isinstance(value, expected):
        raise bad()
    return value


def parse_input(name: str, raw: Any, path: Path) -> FlowInput:
    """A declared flow input (`inputs.<name>` of a DAG or flex YAML), its default coerced to its type."""
    where = f"inputs.{name}"
    raw = mapping(raw, f"{path.name}: {where}")
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


def resolve_inputs(flow: Flow, inputs: dict[str, Any]) -> dict[str, Any]:
    """A run's inputs: defaults applied, types coerced, chat history defaulting to []."""
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
