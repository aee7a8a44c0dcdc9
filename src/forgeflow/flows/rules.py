"""Whole-flow rules checked when a flow loads: chat flows, aggregation nodes, `environment`."""

from __future__ import annotations

from pathlib import Path

from forgeflow.errors import InvalidInput, NotFound
from forgeflow.flows.contract import Flow, FlowOutput, Node, mapping


def check_aggregation(nodes: dict[str, Node], outputs: dict[str, FlowOutput]) -> None:
    """Prompt flow's rules: line nodes and flow outputs never read an aggregation node."""
    for node in nodes.values():
        for ref in node.references():
            if not node.aggregation and ref.kind == "node" and nodes[ref.name].aggregation:
                raise InvalidInput(
                    f"node {node.name!r} reads aggregation node {ref.name!r}; only aggregation nodes may",
                    field=f"{node.name}.inputs",
                )
    for out in outputs.values():
        if out.reference.kind == "node" and nodes[out.reference.name].aggregation:
            raise InvalidInput(
                f"output {out.name!r} references aggregation node {out.reference.name!r}; outputs are per line",
                field=f"outputs.{out.name}.reference",
            )


def check_chat_rules(flow: Flow) -> None:
    """Prompt flow's chat-flow rules: one chat input, at most one list chat history, one chat output."""
    chat_inputs = [i.name for i in flow.inputs.values() if i.is_chat_input]
    histories = [i for i in flow.inputs.values() if i.is_chat_history]
    chat_outputs = [o.name for o in flow.outputs.values() if o.is_chat_output]
    if len(chat_inputs) > 1:
        raise InvalidInput(f"only one input may set is_chat_input (found {', '.join(chat_inputs)})", field=chat_inputs[1])
    if len(histories) > 1:
        names = ", ".join(i.name for i in histories)
        raise InvalidInput(f"only one input may set is_chat_history (found {names})", field=histories[1].name)
    if histories and histories[0].type not in ("list", "any"):
        h = histories[0]
        raise InvalidInput(f"chat history input {h.name!r} must be of type list, not {h.type}", field=h.name)
    if len(chat_outputs) > 1:
        raise InvalidInput(f"only one output may set is_chat_output (found {', '.join(chat_outputs)})", field=chat_outputs[1])
    if chat_inputs and not chat_outputs and flow.outputs:
        raise InvalidInput(
            f"a chat flow (input {chat_inputs[0]!r} is_chat_input) needs one output with is_chat_output: true",
            field="outputs",
        )
    if chat_outputs and not chat_inputs and flow.inputs:
        raise InvalidInput(
            f"output {chat_outputs[0]!r} is_chat_output but no input sets is_chat_input", field="inputs"
        )


def parse_environment(raw: dict, flow_dir: Path, path: Path) -> tuple[dict[str, str], Path | None, tuple[Path, ...]]:
    """(environment_variables, python_requirements_txt, additional_includes) of a DAG or flex YAML, paths checked."""
    env = mapping(raw.get("environment"), f"{path.name}: environment")
    requirements = None
    if env.get("python_requirements_txt"):
        requirements = (flow_dir / str(env["python_requirements_txt"])).resolve()
        if not requirements.is_file():
            raise NotFound(
                f"{path.name}: environment.python_requirements_txt {env['python_requirements_txt']!r} not found",
                field="environment.python_requirements_txt",
            )
    variables = {str(k): "" if v is None else str(v) for k, v in mapping(raw.get("environment_variables"), "environment_variables").items()}
    includes = []
    for i, item in enumerate(raw.get("additional_includes") or []):
        inc = (flow_dir / str(item)).resolve()
        if not inc.exists():
            raise NotFound(f"{path.name}: additional_includes[{i}] {item!r} not found", field=f"additional_includes[{i}]")
        includes.append(inc)
    return variables, requirements, tuple(includes)
