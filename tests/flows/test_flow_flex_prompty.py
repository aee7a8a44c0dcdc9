from __future__ import annotations

import textwrap

import pytest

from forgeflow.errors import InvalidInput, NotFound, UpstreamError
from forgeflow.flows.contract import chat_input_name, chat_output_name
from forgeflow.flows.executor import has_aggregation, run_aggregation, run_flow
from forgeflow.flows.loader import load_flow
from forgeflow.flows.result import StreamingOutput


def write(tmp_path, files):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(textwrap.dedent(text))
    return tmp_path


def test_flex_function_entry(tmp_path):
    write(tmp_path, {
        "flow.flex.yaml": "entry: pkg.entry:answer\n",
        "pkg/__init__.py": "",
        "pkg/entry.py": """
            def answer(question: str, times: int = 2):
                return {"text": question * times}
            """,
    })
    flow = load_flow(tmp_path)
    assert flow.kind == "flex" and flow.inputs["times"].default == 2 and flow.inputs["question"].required
    assert run_flow(tmp_path, {"question": "ab", "times": "3"}).outputs == {"text": "ababab"}
    with pytest.raises(InvalidInput, match="input 'times'"):
        run_flow(tmp_path, {"question": "x", "times": "many"})


def test_flex_class_entry_with_connection_init_and_aggregate(tmp_path):
    write(tmp_path, {
        "flow.flex.yaml": "entry: flow:Grader\noutputs:\n  answer: {type: string, is_chat_output: false}\n",
        "flow.py": """
            from promptflow.connections import CustomConnection

            class Grader:
                def __init__(self, conn: CustomConnection, bonus: int = 0):
                    self.conn, self.bonus = conn, bonus

                def __call__(self, answer: str, truth: str) -> dict:
                    return {"score": int(answer == truth) + self.bonus, "who": self.conn.endpoint}

                def __aggregate__(self, line_results):
                    return {"mean": sum(r["score"] for r in line_results) / len(line_results)}
            """,
    })
    provider = lambda name: {"name": name, "type": "custom", "configs": {"endpoint": "E"}, "secrets": {"key": "K"}}
    init = {"conn": "c1", "bonus": 1}
    lines = [run_flow(tmp_path, {"answer": a, "truth": "x"}, connection_provider=provider, init=init) for a in "xyx"]
    assert [line.outputs for line in lines] == [{"score": 2, "who": "E"}, {"score": 1, "who": "E"}, {"score": 2, "who": "E"}]
    assert has_aggregation(tmp_path)
    agg = run_aggregation(tmp_path, lines, connection_provider=provider, init=init)
    assert agg.metrics == [{"key": "mean", "value": 5 / 3, "variant_id": None}]
    with pytest.raises(InvalidInput, match="init needs 'conn'"):
        run_flow(tmp_path, {"answer": "x", "truth": "x"})


def test_flex_errors(tmp_path):
    write(tmp_path, {"flow.flex.yaml": "entry: nope:f\n"})
    with pytest.raises(NotFound, match="entry module 'nope'"):
        load_flow(tmp_path)
    write(tmp_path, {"flow.flex.yaml": "entry: f.py\n"})
    with pytest.raises(InvalidInput, match="module:function"):
        load_flow(tmp_path)
    write(tmp_path, {"flow.flex.yaml": "entry: m:f\n", "m.py": "def f(q: str):\n    raise KeyError(q)\n"})
    with pytest.raises(UpstreamError) as info:
        run_flow(tmp_path, {"q": "boom"})
    assert "entry 'f'" in info.value.message and "KeyError" in info.value.details


PROMPTY = """\
---
name: Basic chat
model:
  api: chat
  configuration:
    type: openai
    base_url: BASE
    api_key: ${env:FF_PROMPTY_KEY}
    model: tiny-chat
  parameters:
    max_tokens: 32
    temperature: 0
inputs:
  question: {type: string, is_chat_input: true}
  chat_history: {type: list, is_chat_history: true, default: []}
sample:
  question: What is forgeflow?
---
system:
You answer briefly.
{% for item in chat_history %}
user:
{{ item.inputs.question }}
assistant:
{{ item.outputs.output }}
{% endfor %}
user:
{{ question }}
"""


def test_prompty_file(tmp_path, llm_server, monkeypatch):
    monkeypatch.setenv("FF_PROMPTY_KEY", llm_server.key)
    path = tmp_path / "chat.prompty"
    path.write_text(PROMPTY.replace("BASE", llm_server.base + "/v1"))
    flow = load_flow(path)
    assert chat_input_name(flow) == "question" and chat_output_name(flow) == "output"
    result = run_flow(path, {})
    assert result.outputs["output"].startswith("echo: system=You answer briefly. | user=What is forgeflow?")
    body = llm_server.requests[0]["body"]
    assert body["model"] == "tiny-chat" and body["max_tokens"] == 32 and body["temperature"] == 0
    history = [{"inputs": {"question": "hi"}, "outputs": {"output": "yo"}}]
    streamed = run_flow(path, {"question": "next", "chat_history": history}, stream=True)
    assert isinstance(streamed.outputs["output"], StreamingOutput)
    assert "assistant=yo | user=next" in streamed.outputs["output"].read()

    path.write_text(PROMPTY.replace("BASE", llm_server.base + "/v1").replace("{{ question }}", "{{ question }} {{ tone }}"))
    with pytest.raises(InvalidInput, match="tone"):
        run_flow(path, {})
    path.write_text("no front matter")
    with pytest.raises(InvalidInput, match="front matter"):
        load_flow(path)


def test_prompty_with_stored_connection(tmp_path, llm_server):
    path = tmp_path / "c.prompty"
    path.write_text("---\nmodel:\n  configuration: {connection: ep}\ninputs: {q: {type: string}}\n---\n{{ q }}\n")
    provider = lambda n: {"name": n, "type": "custom", "configs": {"endpoint": llm_server.base + "/score"},
                          "secrets": {"key": llm_server.key}}
    assert run_flow(path, {"q": "hello"}, connection_provider=provider).outputs == {"output": "echo: user=hello"}
    with pytest.raises(NotFound, match="connection 'ep' not found"):
        run_flow(path, {"q": "hello"}, connection_provider=lambda n: None)


def test_prompty_parameters_are_sent_or_refused_by_name(tmp_path, llm_server, monkeypatch):
    """A model.parameters key forgeflow cannot send is a 400 naming it, never dropped; the others reach the body."""
    monkeypatch.setenv("FF_PROMPTY_KEY", llm_server.key)
    path = tmp_path / "p.prompty"
    base = PROMPTY.replace("BASE", llm_server.base + "/v1")
    path.write_text(base.replace("max_tokens: 32", "max_tokens: 32\n    seed: 7\n    stop: ['###']"))
    run_flow(path, {})
    body = llm_server.requests[-1]["body"]
    assert body["seed"] == 7 and body["stop"] == ["###"]
    path.write_text(base.replace("max_tokens: 32", "max_tokens: 32\n    logprobs: true"))
    with pytest.raises(InvalidInput, match="model.parameters.logprobs") as refused:
        run_flow(path, {})
    assert refused.value.field == "model.parameters.logprobs"
