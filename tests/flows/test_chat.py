"""`forgeflow flow chat`: a terminal loop whose chat_history holds answers as text."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from forgeflow.cli.main import app
from forgeflow.flows import chat as chat_mod
from forgeflow.flows.result import FlowResult

runner = CliRunner()

CHAT_DAG = """
inputs:
  question: {type: string, is_chat_input: true}
  chat_history: {type: list, is_chat_history: true}
  persona: {type: string, default: "bot"}
outputs:
  answer: {reference: "${reply.output}", is_chat_output: true}
nodes:
- name: reply
  type: python
  source: {type: code, path: reply.py}
  inputs: {question: "${inputs.question}", chat_history: "${inputs.chat_history}", persona: "${inputs.persona}"}
"""
REPLY_PY = """
from promptflow import tool

@tool
def reply(question: str, chat_history: list, persona: str):
    last = chat_history[-1]["outputs"]["answer"] if chat_history else "none"
    for part in (persona, " heard ", question, " after ", last):
        yield part
"""


def test_chat_loop_keeps_text_history(make_flow):
    flow = make_flow(CHAT_DAG, {"reply.py": REPLY_PY})
    res = runner.invoke(app, ["flow", "chat", "--flow", str(flow), "--inputs", "persona=Ada", "--json"],
                        input="hello\n\nsecond\nexit\nnever\n")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["turns"] == 2
    first, second = out["chat_history"]
    assert first == {"inputs": {"question": "hello", "persona": "Ada"}, "outputs": {"answer": "Ada heard hello after none"}}
    assert second["outputs"]["answer"] == "Ada heard second after Ada heard hello after none"


def test_plain_output_shows_answers_and_ctrl_d_quits(make_flow):
    flow = make_flow(CHAT_DAG, {"reply.py": REPLY_PY})
    res = runner.invoke(app, ["flow", "chat", "--flow", str(flow)], input="hi\n")
    assert res.exit_code == 0, res.output
    assert "User: hi" in res.stdout and "Bot: bot heard hi after none" in res.stdout


def test_streamed_chunks_are_printed_then_stored_as_text(make_flow, monkeypatch):
    """With stream=True the engine hands back an iterator; the history must get its text."""
    flow = make_flow(CHAT_DAG, {"reply.py": REPLY_PY})
    seen = []

    def fake_call(flow_dir, inputs, *, connection_provider=None, stream=False, variant=None):
        assert stream is True and variant is None
        seen.append(json.loads(json.dumps(inputs["chat_history"])))
        return FlowResult(outputs={"answer": iter(["chunk-1 ", "chunk-2 ", inputs["question"]])},
                          node_results={}, duration_s=0.0, inputs=dict(inputs))

    monkeypatch.setattr(chat_mod, "run_flow", fake_call)
    session = chat_mod.ChatSession(flow)
    chunks = []
    session.ask("q1", on_chunk=chunks.append)
    session.ask("q2", on_chunk=chunks.append)
    assert chunks == ["chunk-1 ", "chunk-2 ", "q1", "chunk-1 ", "chunk-2 ", "q2"]
    assert seen[1] == [{"inputs": {"question": "q1"}, "outputs": {"answer": "chunk-1 chunk-2 q1"}}]
    assert "Iterator" not in json.dumps(session.history)


def test_a_flow_without_chat_markers_is_refused(make_flow):
    flow = make_flow("inputs:\n  x: {type: string}\noutputs:\n  y: {reference: '${inputs.x}'}\nnodes: []\n")
    res = runner.invoke(app, ["flow", "chat", "--flow", str(flow)], input="hi\n")
    assert res.exit_code == 1 and "not a chat flow" in res.output
