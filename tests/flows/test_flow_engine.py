from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from forgeflow.errors import InvalidInput, NotFound, UpstreamError
from forgeflow.flows.contract import chat_history_name
from forgeflow.flows.executor import has_aggregation, run_aggregation, run_flow
from forgeflow.flows.loader import load_flow

SLEEPY = """
from promptflow import tool
import threading, time

@tool
def wait(name: str, seconds: float = 0.0) -> str:
    time.sleep(seconds)
    return f"{name}@{threading.current_thread().name}"
"""

FAN = """
inputs: {}
outputs:
  joined: {reference: '${join.output}'}
nodes:
- {name: a, type: python, source: {type: code, path: wait.py}, inputs: {name: a, seconds: 0.3}}
- {name: b, type: python, source: {type: code, path: wait.py}, inputs: {name: b, seconds: 0.3}}
- {name: c, type: python, source: {type: code, path: wait.py}, inputs: {name: c, seconds: 0.3}}
- name: join
  type: python
  source: {type: code, path: join.py}
  inputs: {parts: ['${a.output}', '${b.output}', '${c.output}']}
"""

JOIN = "from promptflow import tool\n\n@tool\ndef join(parts=None, **more) -> str:\n    return ','.join(parts or [])\n"


def test_independent_nodes_run_concurrently(make_flow):
    flow_dir = make_flow(FAN.replace("parts: ['${a.output}', '${b.output}', '${c.output}']",
                                     "a: '${a.output}', b: '${b.output}', c: '${c.output}'"),
                         {"wait.py": SLEEPY, "join.py": "from promptflow import tool\n\n@tool\ndef join(a, b, c):\n    return ','.join([a, b, c])\n"})
    result = run_flow(flow_dir, {})
    threads = {part.split("@")[1] for part in result.outputs["joined"].split(",")}
    assert len(threads) == 3  # a, b and c ran on three threads at once
    assert all(result.node_results[n]["status"] == "Completed" for n in "abc")


def test_timeout_and_retries(make_flow, tmp_path):
    counter = tmp_path / "count.txt"
    flaky = f"""
from promptflow import tool
from pathlib import Path

@tool
def flaky() -> str:
    p = Path({str(counter)!r})
    n = int(p.read_text()) if p.exists() else 0
    p.write_text(str(n + 1))
    if n < 2:
        raise RuntimeError(f"attempt {{n}} failed")
    return f"ok after {{n + 1}}"
"""
    dag = """
inputs: {}
outputs: {o: {reference: '${n.output}'}}
nodes:
- {name: n, type: python, source: {type: code, path: flaky.py}, retries: RETRIES, retry_delay: 0}
"""
    assert run_flow(make_flow(dag.replace("RETRIES", "2"), {"flaky.py": flaky}), {}).outputs == {"o": "ok after 3"}
    counter.unlink()
    with pytest.raises(UpstreamError) as info:
        run_flow(make_flow(dag.replace("RETRIES", "1"), {"flaky.py": flaky}, name="f2"), {})
    assert "node 'n'" in info.value.message and "attempt 1 failed" in info.value.message
    assert "Traceback" in info.value.details

    slow = "inputs: {}\nnodes:\n- {name: s, type: python, source: {type: code, path: wait.py}, inputs: {name: s, seconds: 2}, timeout: 0.2}\n"
    with pytest.raises(UpstreamError) as info:
        run_flow(make_flow(slow, {"wait.py": SLEEPY}, name="slow"), {})
    assert "node 's' timed out after 0.2s" in info.value.message and info.value.field == "s.timeout"
    with pytest.raises(InvalidInput, match="node 's'.*timeout must be a number"):
        load_flow(make_flow(slow.replace("timeout: 0.2", "timeout: soon"), {"wait.py": SLEEPY}, name="bad"))


AGG = """
inputs:
  answer: {type: string}
  truth: {type: string}
outputs:
  correct: {reference: '${grade.output}'}
nodes:
- {name: grade, type: python, source: {type: code, path: grade.py}, inputs: {answer: '${inputs.answer}', truth: '${inputs.truth}'}}
- name: accuracy
  type: python
  source: {type: code, path: accuracy.py}
  inputs: {grades: '${grade.output}', truths: '${inputs.truth}'}
  aggregation: true
"""
AGG_FILES = {
    "grade.py": "from promptflow import tool\n\n@tool\ndef grade(answer: str, truth: str) -> bool:\n    return answer == truth\n",
    "accuracy.py": "from promptflow.core import tool, log_metric\n\n@tool\ndef accuracy(grades: list, truths: list) -> float:\n"
    "    value = sum(grades) / len(grades)\n    log_metric('accuracy', value)\n    log_metric('lines', len(truths))\n    return value\n",
}


def test_aggregation_single_line_and_batch(make_flow):
    flow_dir = make_flow(AGG, AGG_FILES)
    assert has_aggregation(flow_dir)
    one = run_flow(flow_dir, {"answer": "x", "truth": "x"})
    assert one.outputs == {"correct": True}
    assert one.metrics == [{"key": "accuracy", "value": 1.0, "variant_id": None}, {"key": "lines", "value": 1, "variant_id": None}]
    assert one.node_results["accuracy"]["output"] == 1.0

    lines = [run_flow(flow_dir, {"answer": a, "truth": "x"}, aggregate=False) for a in ("x", "y", "x", "x")]
    assert all(line.metrics == [] and "accuracy" not in line.node_results for line in lines)
    agg = run_aggregation(flow_dir, [lines[0], lines[1].to_dict(), *lines[2:]])
    assert agg.outputs == {"accuracy": 0.75}
    assert {m["key"]: m["value"] for m in agg.metrics} == {"accuracy": 0.75, "lines": 4}


@pytest.mark.parametrize(
    "dag, words",
    [
        (AGG.replace("correct: {reference: '${grade.output}'}", "correct: {reference: '${accuracy.output}'}"),
         ["output 'correct'", "aggregation node 'accuracy'"]),
        (AGG + "- {name: late, type: python, source: {type: code, path: grade.py}, inputs: {answer: '${accuracy.output}', truth: x}}\n",
         ["node 'late'", "aggregation node 'accuracy'"]),
    ],
)
def test_aggregation_rules(make_flow, dag, words):
    with pytest.raises(InvalidInput) as info:
        load_flow(make_flow(dag, AGG_FILES))
    for word in words:
        assert word in info.value.message


def test_environment_variables_requirements_and_includes(make_flow, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    (shared / "common").mkdir(parents=True)
    (shared / "common" / "__init__.py").write_text("PREFIX = 'shared'\n")
    (shared / "util_tool.py").write_text(
        "from promptflow import tool\nimport os, common\n\n@tool\ndef util() -> str:\n"
        "    return f\"{common.PREFIX}:{os.environ['FF_FLOW_VAR']}\"\n"
    )
    (tmp_path / "flow").mkdir()
    (tmp_path / "flow" / "requirements.txt").write_text(
        "# comment\npromptflow\npromptflow-tools>=1.0\nPyYAML>=5\n--index-url https://example.invalid\n"
    )
    monkeypatch.delenv("FF_FLOW_VAR", raising=False)
    dag = """
inputs: {}
outputs: {o: {reference: '${u.output}'}}
environment: {python_requirements_txt: requirements.txt}
environment_variables: {FF_FLOW_VAR: from-flow}
additional_includes: [../shared/common, ../shared/util_tool.py]
nodes:
- {name: u, type: python, source: {type: code, path: util_tool.py}}
"""
    flow_dir = make_flow(dag)
    assert run_flow(flow_dir, {}).outputs == {"o": "shared:from-flow"}
    assert "FF_FLOW_VAR" not in os.environ
    monkeypatch.setenv("FF_FLOW_VAR", "mine")
    run_flow(flow_dir, {})
    assert os.environ["FF_FLOW_VAR"] == "mine"

    (flow_dir / "requirements.txt").write_text("pyyaml>=5\nno-such-package-ff==1.0\nPyYAML<1\n")
    with pytest.raises(InvalidInput) as info:
        run_flow(flow_dir, {})
    msg = info.value.message
    assert "no-such-package-ff==1.0 (not installed)" in msg and "PyYAML<1 (installed: " in msg
    assert "pyyaml>=5" not in msg and info.value.field == "environment.python_requirements_txt"

    bad = make_flow(dag.replace("../shared/common", "../nowhere").replace("environment: {python_requirements_txt: requirements.txt}\n", ""), name="bad")
    with pytest.raises(NotFound, match=r"additional_includes\[0\] '../nowhere'"):
        load_flow(bad)


@pytest.mark.parametrize(
    "inputs, outputs, words",
    [
        ("a: {type: string, is_chat_input: true}\n  b: {type: string, is_chat_input: true}", "o: {reference: '${n.output}', is_chat_output: true}", ["one input", "is_chat_input", "a, b"]),
        ("a: {type: string, is_chat_input: true}\n  h: {type: string, is_chat_history: true}", "o: {reference: '${n.output}', is_chat_output: true}", ["'h'", "type list"]),
        ("a: {type: string, is_chat_input: true}", "o: {reference: '${n.output}'}", ["chat flow", "is_chat_output"]),
        ("a: {type: string, is_chat_input: true}", "o: {reference: '${n.output}', is_chat_output: true}\n  p: {reference: '${n.output}', is_chat_output: true}", ["one output", "o, p"]),
    ],
)
def test_chat_flow_rules(make_flow, inputs, outputs, words):
    dag = f"inputs:\n  {inputs}\noutputs:\n  {outputs}\nnodes:\n- {{name: n, type: python, source: {{type: code, path: j.py}}}}\n"
    with pytest.raises(InvalidInput) as info:
        load_flow(make_flow(dag, {"j.py": JOIN}))
    for word in words:
        assert word in info.value.message


def test_chat_history_is_inferred_by_name(make_flow):
    dag = ("inputs:\n  chat_history: {type: list}\n  q: {type: string, is_chat_input: true}\n"
           "outputs:\n  o: {reference: '${n.output}', is_chat_output: true}\n"
           "nodes:\n- {name: n, type: python, source: {type: code, path: j.py}}\n")
    assert chat_history_name(load_flow(make_flow(dag, {"j.py": JOIN}))) == "chat_history"


def test_streaming_python_tool_and_concurrent_calls(make_flow):
    gen = "from promptflow import tool\n\n@tool\ndef words(q: str):\n    for w in q.split():\n        yield w + ' '\n"
    dag = ("inputs:\n  q: {type: string}\noutputs:\n  o: {reference: '${w.output}'}\n  upper: {reference: '${u.output}'}\n"
           "nodes:\n- {name: w, type: python, source: {type: code, path: w.py}, inputs: {q: '${inputs.q}'}}\n"
           "- {name: u, type: python, source: {type: code, path: w.py}, inputs: {q: '${inputs.q}'}}\n"
           "- {name: v, type: python, source: {type: code, path: j.py}, inputs: {parts: '${u.output}'}}\n")
    flow_dir = make_flow(dag, {"w.py": gen, "j.py": JOIN})
    streamed = run_flow(flow_dir, {"q": "a b c"}, stream=True)
    assert list(streamed.outputs["o"]) == ["a ", "b ", "c "]
    assert streamed.outputs["upper"] == "a b c "  # read by node v, so joined
    assert streamed.node_results["w"]["output"] == "a b c "

    flow = load_flow(flow_dir)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: run_flow(flow, {"q": f"x{i} y"}).outputs["o"], range(64)))
    assert results == [f"x{i} y " for i in range(64)]
    assert threading.active_count() < 80
