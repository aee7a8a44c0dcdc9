from __future__ import annotations

import json
import sys

import pytest

from forgeflow.errors import InvalidInput, NotFound, UpstreamError
from forgeflow.flows.executor import run_flow, write_details

TOOLS = {
    "tools.py": """
        from promptflow.core import tool, log_metric

        @tool
        def profile(name: str, age: int) -> dict:
            log_metric("age", age)
            return {"user": {"name": name, "tags": ["a", "b"]}, "adult": age >= 18}
        """,
    "greet.py": """
        from promptflow import tool

        @tool
        def greet(name: str, mood: str = "hello") -> str:
            return f"{mood} {name}"
        """,
    "child.py": """
        from promptflow import tool

        @tool
        def child(name: str) -> str:
            return f"hi little {name}"
        """,
    "join.py": """
        from promptflow import tool

        @tool
        def join(a=None, b=None) -> str:
            return f"{a}|{b}"
        """,
}

BRANCHING = """
    inputs:
      name: {type: string}
      age: {type: int, default: 30}
    outputs:
      name: {type: string, reference: '${profile.output.user.name}'}
      second_tag: {type: string, reference: '${profile.output.user.tags.1}'}
      adult: {type: string, reference: '${adult.output}'}
      kid: {type: string, reference: '${kid.output}'}
      joined: {type: string, reference: '${joined.output}'}
    nodes:
    - name: joined
      type: python
      source: {type: code, path: join.py}
      inputs: {a: '${adult.output}', b: '${kid.output}'}
    - name: profile
      type: python
      source: {type: code, path: tools.py}
      inputs: {name: '${inputs.name}', age: '${inputs.age}'}
    - name: adult
      type: python
      source: {type: code, path: greet.py}
      inputs: {name: '${profile.output.user.name}', mood: good day}
      activate: {when: '${profile.output.adult}', is: true}
    - name: kid
      type: python
      source: {type: code, path: child.py}
      inputs: {name: '${profile.output.user.name}'}
      activate: {when: '${profile.output.adult}', is: false}
    """


def test_references_activate_and_metrics(make_flow):
    flow_dir = make_flow(BRANCHING, TOOLS)
    result = run_flow(flow_dir, {"name": "Ada"})
    assert result.outputs == {
        "name": "Ada",
        "second_tag": "b",
        "adult": "good day Ada",
        "kid": None,
        "joined": "good day Ada|None",
    }
    assert result.node_results["kid"]["status"] == "Bypassed" and result.node_results["kid"]["output"] is None
    assert result.node_results["profile"]["status"] == "Completed"
    assert list(result.node_results)[0] == "profile"
    assert result.metrics == [{"key": "age", "value": 30, "variant_id": None}]
    assert result.inputs == {"name": "Ada", "age": 30}

    young = run_flow(flow_dir, {"name": "Tim", "age": "7"})
    assert young.outputs["adult"] is None and young.outputs["kid"] == "hi little Tim"
    assert young.node_results["adult"]["status"] == "Bypassed"


def test_node_downstream_of_only_bypassed_nodes_is_bypassed(make_flow):
    text = BRANCHING.replace("inputs: {a: '${adult.output}', b: '${kid.output}'}", "inputs: {a: '${kid.output}'}")
    result = run_flow(make_flow(text, TOOLS), {"name": "Ada"})
    assert result.node_results["joined"]["status"] == "Bypassed" and result.outputs["joined"] is None


@pytest.mark.parametrize(
    "inputs, words",
    [
        ({}, ["missing required flow input 'name'"]),
        ({"name": "x", "age": "old"}, ["input 'age'", "expected int"]),
        ({"name": "x", "age": True}, ["input 'age'", "expected int"]),
        ({"name": {"a": 1}}, ["input 'name'", "expected string"]),
        ({"name": "x", "shoe": 1}, ["unknown flow input 'shoe'", "name, age"]),
    ],
)
def test_bad_inputs(make_flow, inputs, words):
    with pytest.raises(InvalidInput) as info:
        run_flow(make_flow(BRANCHING, TOOLS), inputs)
    for word in words:
        assert word in info.value.message


def test_single_node_run(make_flow):
    flow_dir = make_flow(BRANCHING, TOOLS)
    result = run_flow(flow_dir, {"name": "Ada"}, node="adult")
    assert result.outputs == {"adult": "good day Ada"} and list(result.node_results) == ["adult"]
    assert run_flow(flow_dir, {"profile.output.user.name": "Bo"}, node="kid").outputs == {"kid": "hi little Bo"}
    assert run_flow(flow_dir, {"name": "Cy", "age": "40"}, node="profile").outputs["profile"]["adult"] is True
    assert run_flow(flow_dir, {"name": "Cy"}, node="profile").outputs["profile"]["adult"] is True
    with pytest.raises(InvalidInput, match="node 'kid': input 'name'"):
        run_flow(flow_dir, {}, node="kid")
    with pytest.raises(NotFound, match="no node 'nope'"):
        run_flow(flow_dir, {}, node="nope")


def test_tool_error_names_node_and_keeps_traceback(make_flow):
    flow_dir = make_flow(
        """
        inputs: {q: {type: string}}
        outputs: {o: {reference: '${boom.output}'}}
        nodes:
        - {name: boom, type: python, source: {type: code, path: boom.py}, inputs: {q: '${inputs.q}'}}
        """,
        {"boom.py": "from promptflow import tool\n\ndef helper(q):\n    raise ValueError('bad ' + q)\n\n@tool\ndef boom(q: str):\n    return helper(q)\n"},
    )
    with pytest.raises(UpstreamError) as info:
        run_flow(flow_dir, {"q": "thing"})
    err = info.value
    assert "node 'boom'" in err.message and "ValueError: bad thing" in err.message
    assert "Traceback" in err.details and "helper" in err.details and "boom.py" in err.details
    assert err.result.status == "Failed"
    assert err.result.node_results["boom"]["error"] == err.details
    details = json.loads(write_details(flow_dir, err.result).read_text())
    assert details["status"] == "Failed" and "ValueError" in details["node_results"]["boom"]["error"]


@pytest.mark.parametrize(
    "source, words",
    [
        ("def f(q):\n    return q\n", ["exactly one function decorated with @tool", "found none"]),
        (
            "from promptflow import tool\n@tool\ndef f(q):\n    return q\n@tool\ndef g(q):\n    return q\n",
            ["exactly one", "f, g"],
        ),
        ("from promptflow import tool\n@tool\ndef f(other):\n    return other\n", ["input 'q' is not a parameter"]),
        ("from promptflow import tool\n@tool\ndef f(q, must):\n    return q\n", ["missing input 'must'"]),
    ],
)
def test_bad_tool_modules(make_flow, source, words):
    flow_dir = make_flow(
        "inputs: {q: {type: string}}\nnodes:\n"
        "- {name: n, type: python, source: {type: code, path: t.py}, inputs: {q: '${inputs.q}'}}\n",
        {"t.py": source},
    )
    with pytest.raises(InvalidInput) as info:
        run_flow(flow_dir, {"q": "x"})
    assert "node 'n'" in info.value.message
    for word in words:
        assert word in info.value.message


def test_aggregation_node_needs_no_support_flag_and_prompt_nodes_render(make_flow):
    flow_dir = make_flow(
        "inputs: {x: {type: string, default: hi}}\noutputs: {o: {reference: '${p.output}'}}\nnodes:\n"
        "- {name: p, type: prompt, source: {type: code, path: p.jinja2}, inputs: {x: '${inputs.x}'}}\n",
        {"p.jinja2": "say {{ x }}"},
    )
    assert run_flow(flow_dir, {}).outputs == {"o": "say hi"}


def test_modules_are_fresh_each_run_and_can_import_siblings(make_flow):
    flow_dir = make_flow(
        "inputs: {}\noutputs: {o: {reference: '${n.output}'}}\nnodes:\n"
        "- {name: n, type: python, source: {type: code, path: tools/t.py}}\n",
        {
            "helper.py": "VALUE = 'one'\n",
            "tools/t.py": "from promptflow import tool\nimport helper\n\n@tool\ndef f():\n    return helper.VALUE\n",
        },
    )
    assert run_flow(flow_dir, {}).outputs == {"o": "one"}
    assert "helper" not in sys.modules and str(flow_dir) not in sys.path
    (flow_dir / "helper.py").write_text("VALUE = 'two'\n")
    assert run_flow(flow_dir, {}).outputs == {"o": "two"}


def test_chat_history_defaults_to_empty_list_and_async_and_streaming_tools(make_flow):
    flow_dir = make_flow(
        """
        inputs:
          chat_history: {type: list, is_chat_history: true}
          question: {type: string, is_chat_input: true}
        outputs:
          answer: {type: string, reference: '${stream.output}', is_chat_output: true}
          turns: {type: int, reference: '${count.output}'}
        nodes:
        - {name: count, type: python, source: {type: code, path: count.py}, inputs: {h: '${inputs.chat_history}'}}
        - {name: stream, type: python, source: {type: code, path: stream.py}, inputs: {q: '${inputs.question}'}}
        """,
        {
            "count.py": "from promptflow import tool\n@tool\nasync def count(h: list) -> int:\n    return len(h)\n",
            "stream.py": "from promptflow import tool\n@tool\ndef s(q: str):\n    for w in q.split():\n        yield w + '.'\n",
        },
    )
    result = run_flow(flow_dir, {"question": "a b"})
    assert result.outputs == {"answer": "a.b.", "turns": 0}
    history = [{"inputs": {"question": "x"}, "outputs": {"answer": "y"}}]
    assert run_flow(flow_dir, {"question": "c", "chat_history": json.dumps(history)}).outputs["turns"] == 1


def test_connection_annotation_under_future_annotations(make_flow):
    flow_dir = make_flow(
        "inputs: {conn: {type: string, default: my-conn}}\noutputs: {o: {reference: '${n.output}'}}\nnodes:\n"
        "- {name: n, type: python, source: {type: code, path: t.py}, inputs: {c: '${inputs.conn}'}}\n",
        {
            "t.py": "from __future__ import annotations\nfrom promptflow.core import tool\n"
            "from promptflow.connections import CustomConnection\n\n"
            "@tool\ndef f(c: CustomConnection) -> str:\n    return f'{c.name} {c.endpoint} {c.key} {c.configs} {c[\"key\"]}'\n"
        },
    )
    seen = []

    def provider(name):
        seen.append(name)
        if name != "my-conn":
            raise NotFound(f"no connection {name}")
        return {"name": name, "type": "custom", "configs": {"endpoint": "E"}, "secrets": {"key": "K"}}

    assert run_flow(flow_dir, {}, connection_provider=provider).outputs == {"o": "my-conn E K {'endpoint': 'E'} K"}
    with pytest.raises(NotFound) as info:
        run_flow(flow_dir, {"conn": "other"}, connection_provider=provider)
    assert "node 'n'" in info.value.message and "'other'" in info.value.message
    assert seen == ["my-conn", "other"]
