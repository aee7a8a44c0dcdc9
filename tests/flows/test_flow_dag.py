from __future__ import annotations

import pytest

from forgeflow.errors import InvalidInput, NotFound
from forgeflow.flows.contract import Reference, chat_history_name, chat_input_name, chat_output_name
from forgeflow.flows.loader import load_flow

ECHO = {"echo.py": "from promptflow import tool\n\n@tool\ndef echo(x=None, y=None):\n    return x\n"}


def node(name: str, **inputs: str) -> str:
    lines = [f"- name: {name}", "  type: python", "  source: {type: code, path: echo.py}", "  inputs:"]
    lines += [f"    {k}: {v}" for k, v in inputs.items()] or ["    x: 1"]
    return "\n".join(lines) + "\n"


def dag(*nodes: str, inputs: str = "inputs:\n  q: {type: string}\n", outputs: str = "") -> str:
    return inputs + outputs + "nodes:\n" + "".join(nodes)


def test_parses_chat_flow_and_accepts_dag_yml(tmp_path):
    (tmp_path / "echo.py").write_text(ECHO["echo.py"])
    (tmp_path / "flow.dag.yml").write_text(
        "inputs:\n"
        "  chat_history: {type: list, is_chat_history: true}\n"
        "  question: {type: string, is_chat_input: true, description: asked}\n"
        "  n: {type: int, default: '3'}\n"
        "outputs:\n"
        "  answer: {type: string, reference: '${b.output.text.0}', is_chat_output: true}\n"
        "nodes:\n" + node("b", x="${a.output}") + node("a", x="${inputs.question}", y="${inputs.n}")
    )
    flow = load_flow(tmp_path)
    assert flow.path.name == "flow.dag.yml"
    assert flow.order == ["a", "b"]
    assert flow.inputs["n"].default == 3 and flow.inputs["question"].required
    assert not flow.inputs["chat_history"].required
    assert flow.outputs["answer"].reference == Reference("node", "b", ("text", "0"))
    assert chat_input_name(flow) == "question" and chat_output_name(flow) == "answer"
    assert chat_history_name(flow) == "chat_history"


@pytest.mark.parametrize(
    "text, words",
    [
        (dag(node("a", x="${b.output}"), node("b", x="${a.output}")), ["cycle", "a -> b -> a"]),
        (dag(node("a", x="${a.output}")), ["cycle", "a -> a"]),
        (dag(node("a", x="${ghost.output}")), ["node 'a'", "'x'", "unknown node 'ghost'"]),
        (dag(node("a", x="${inputs.nope}")), ["node 'a'", "'x'", "unknown flow input 'nope'", "q"]),
        (dag(node("a", x="${a.outputs}")), ["a.inputs.x", "bad reference"]),
        (dag(node("a"), node("a")), ["duplicate node name 'a'"]),
        (dag(outputs="outputs:\n  o: {reference: '${zz.output}'}\n"), ["output 'o'", "unknown node 'zz'"]),
        (dag(node("a"), inputs="inputs:\n  q: {type: float}\n"), ["inputs.q.type", "string, int"]),
        (dag(node("a"), inputs="inputs:\n  q: {type: int, default: abc}\n"), ["inputs.q.default", "expected int"]),
        (dag("- name: a\n  type: shell\n  source: {type: code, path: echo.py}\n"), ["node 'a'", "type 'shell'"]),
        (
            dag("- name: a\n  type: python\n  source: {type: code, path: echo.py}\n  activate: {when: x, is: 1}\n"),
            ["node 'a'", "activate.when"],
        ),
    ],
)
def test_validation_errors_name_the_culprit(make_flow, text, words):
    flow_dir = make_flow(text, ECHO)
    with pytest.raises(InvalidInput) as info:
        load_flow(flow_dir)
    for word in words:
        assert word in info.value.message


def test_missing_source_file_and_missing_dag(make_flow, tmp_path):
    flow_dir = make_flow(dag("- name: a\n  type: python\n  source: {type: code, path: gone.py}\n"))
    with pytest.raises(NotFound) as info:
        load_flow(flow_dir)
    assert "node 'a'" in info.value.message and "gone.py" in info.value.message
    with pytest.raises(NotFound, match="no flow.dag.yaml"):
        load_flow(tmp_path / "empty")
