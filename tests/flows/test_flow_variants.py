"""Node variants (Prompt flow's prompt tuning): `use_variants`, `node_variants`, `default_variant_id`, a run's
`${node.variant_id}`, a batch run per variant and their metrics compared."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from flow_fixtures import VARIANT_EVAL_FLOW, VARIANT_FLOW, variant_connection

from forgeflow.errors import InvalidInput, NotFound
from forgeflow.flows.batch import BatchRun, compare, start_run
from forgeflow.flows.catalog import describe
from forgeflow.flows.executor import run_flow
from forgeflow.flows.loader import load_flow
from forgeflow.flows.runs import RunRecord

SYSTEMS = {"variant_0": "Answer in one word.", "variant_1": 'Reply with JSON holding "answer" and "reason".',
           "variant_2": "You are a patient geography tutor. Name the place first, then say one thing about it."}
MAX_TOKENS = {"variant_0": 3, "variant_1": 9, "variant_2": 20}


@pytest.fixture
def flow_dir(tmp_path) -> Path:
    return Path(shutil.copytree(VARIANT_FLOW, tmp_path / "prompt_variants"))


def test_a_node_with_variants_runs_its_default(flow_dir):
    flow = load_flow(flow_dir)
    assert flow.order == ["chat", "pick"] and flow.variant is None
    chat = flow.nodes["chat"]
    assert (chat.type, chat.path.name, chat.variant, chat.connection) == ("llm", "one_word.jinja2", "variant_0",
                                                                          "open_ai_connection")
    assert list(flow.node_variants["chat"].variants) == ["variant_0", "variant_1", "variant_2"]
    graph = describe(flow)
    drawn = {n["name"]: n for n in graph["nodes"]}
    assert drawn["chat"]["default_variant"] == "variant_0" and drawn["chat"]["variant"] == "variant_0"
    assert drawn["chat"]["variants"]["variant_2"] == {"source": "tutor.jinja2"}
    assert drawn["pick"]["variants"] is None and {"from": "chat", "to": "pick"} in graph["edges"]


@pytest.mark.parametrize("variant", ["variant_0", "variant_1", "variant_2"])
def test_each_variant_sends_its_own_prompt(flow_dir, llm_server, variant):
    result = run_flow(flow_dir, {"question": "Where is Vellmora?"}, connection_provider=variant_connection(llm_server),
                      variant="${chat.%s}" % variant)
    [req] = llm_server.requests
    body = req["body"]
    assert req["path"] == "/v1/chat/completions" and req["headers"]["Authorization"] == f"Bearer {llm_server.key}"
    assert body["model"] == "gpt-4" and body["max_tokens"] == MAX_TOKENS[variant] and body["temperature"] == 0
    assert body["messages"][0] == {"role": "system", "content": SYSTEMS[variant]}
    assert body["messages"][-1] == {"role": "user", "content": "Where is Vellmora?"}
    assert len(body["messages"]) == {"variant_0": 2, "variant_1": 4, "variant_2": 6}[variant]
    assert result.variant == "${chat.%s}" % variant
    assert result.outputs["answer"].startswith(f"echo: system={SYSTEMS[variant]} | ")
    assert result.node_results["pick"]["status"] == "Completed"


def test_one_node_of_a_picked_variant(flow_dir, llm_server):
    # pf flow test --node chat --variant ${chat.variant_1}
    result = run_flow(flow_dir, {"question": "Why?"}, connection_provider=variant_connection(llm_server),
                      node="chat", variant="${chat.variant_1}")
    assert list(result.outputs) == ["chat"] and llm_server.requests[0]["body"]["max_tokens"] == 9


def test_a_picked_variant_is_cached_apart_from_the_default(flow_dir):
    default, picked = load_flow(flow_dir), load_flow(flow_dir, "'${chat.variant_1}'")
    assert picked.nodes["chat"].path.name == "json_reply.jinja2" and picked.variant == ("chat", "variant_1")
    assert load_flow(flow_dir).nodes["chat"].path.name == "one_word.jinja2" and load_flow(flow_dir) is default
    assert load_flow(flow_dir, "${ chat.variant_1 }") is picked
    assert load_flow(default, "${chat.variant_2}").nodes["chat"].path.name == "tutor.jinja2"


def test_chat_history_reaches_the_picked_variant(flow_dir, llm_server):
    history = [{"inputs": {"question": "Capital of Spain?"}, "outputs": {"answer": "Madrid"}}]
    run_flow(flow_dir, {"question": "And of Italy?", "chat_history": history},
             connection_provider=variant_connection(llm_server), variant="${chat.variant_2}")
    messages = llm_server.requests[0]["body"]["messages"]
    assert messages[-3:] == [{"role": "user", "content": "Capital of Spain?"},
                             {"role": "assistant", "content": "Madrid"}, {"role": "user", "content": "And of Italy?"}]


@pytest.mark.parametrize("spec, words", [
    ("${nope.variant_1}", ["no node 'nope'", "nodes with variants: chat"]),
    ("${chat.variant_9}", ["node 'chat' has no variant 'variant_9'", "variant_0, variant_1, variant_2"]),
    ("${pick.variant_1}", ["node 'pick' has no variants", "use_variants"]),
    ("chat.variant_1", ["${NODE.VARIANT_ID}"]),
    ("${chat}", ["${NODE.VARIANT_ID}"]),
])
def test_an_unknown_node_or_variant_is_refused_naming_it(flow_dir, llm_server, spec, words):
    with pytest.raises(InvalidInput) as info:
        run_flow(flow_dir, {}, connection_provider=variant_connection(llm_server), variant=spec)
    assert info.value.field == "variant"
    for word in words:
        assert word in info.value.message
    assert llm_server.requests == []


def test_variants_are_for_dag_flows_only(make_flow, tmp_path):
    flex = tmp_path / "flex"
    flex.mkdir()
    (flex / "flow.flex.yaml").write_text("entry: entry:run\n")
    (flex / "entry.py").write_text("def run(q: str) -> str:\n    return q\n")
    with pytest.raises(InvalidInput, match="only a DAG flow"):
        run_flow(flex, {"q": "x"}, variant="${chat.variant_1}")


FLOW_HEAD = """
inputs:
  q: {type: string}
outputs:
  out: {type: string, reference: '${n.output}'}
nodes:
"""
ECHO = "from promptflow import tool\n\n@tool\ndef f(x: str) -> str:\n    return x\n"
SHOUT = "from promptflow import tool\n\n@tool\ndef f(x: str) -> str:\n    return x.upper()\n"


def _variant(path: str, extra: str = "") -> str:
    return f"""
        node:
          type: python
          source: {{type: code, path: {path}}}
          inputs: {{x: '${{inputs.q}}'}}{extra}
"""


def test_the_variants_own_definition_replaces_whatever_the_node_says(make_flow):
    # Prompt flow's own test flows keep a full definition beside use_variants; the variant's wins.
    flow_dir = make_flow(FLOW_HEAD + """
- name: n
  use_variants: true
  type: python
  source: {type: code, path: echo.py}
  inputs: {x: '${inputs.q}'}
node_variants:
  n:
    default_variant_id: loud
    variants:
      loud:""" + _variant("shout.py"), {"echo.py": ECHO, "shout.py": SHOUT})
    assert run_flow(flow_dir, {"q": "hi"}).outputs == {"out": "HI"}


def test_flows_without_variants_are_unchanged(make_flow):
    # `node_variants: {}` and `use_variants: false` are what Prompt flow's tools write into plain flows.
    flow_dir = make_flow(FLOW_HEAD + """
- name: n
  type: python
  source: {type: code, path: echo.py}
  inputs: {x: '${inputs.q}'}
  use_variants: false
node_variants: {}
""", {"echo.py": ECHO})
    flow = load_flow(flow_dir)
    assert flow.node_variants == {} and flow.nodes["n"].variant is None
    assert run_flow(flow_dir, {"q": "hi"}).outputs == {"out": "hi"} and run_flow(flow_dir, {"q": "hi"}).variant is None


def test_variants_of_a_node_that_does_not_use_them_stay_unused(make_flow):
    # A run snapshot of Prompt flow keeps node_variants beside nodes that no longer use them.
    flow_dir = make_flow(FLOW_HEAD + """
- name: n
  type: python
  source: {type: code, path: echo.py}
  inputs: {x: '${inputs.q}'}
node_variants:
  n:
    default_variant_id: loud
    variants:
      loud:""" + _variant("missing.py"), {"echo.py": ECHO})
    assert run_flow(flow_dir, {"q": "hi"}).outputs == {"out": "hi"}
    with pytest.raises(InvalidInput, match="node 'n' has no variants"):
        run_flow(flow_dir, {"q": "hi"}, variant="${n.loud}")


@pytest.mark.parametrize("tail, field, words", [
    ("", "node_variants.n", "node_variants has no entry 'n'"),
    ("node_variants:\n  n:\n    variants:\n      a:" + _variant("echo.py"), "node_variants.n.default_variant_id",
     "default_variant_id None names no variant"),
    ("node_variants:\n  n:\n    default_variant_id: b\n    variants:\n      a:" + _variant("echo.py"),
     "node_variants.n.default_variant_id", "(variants: a)"),
    ("node_variants:\n  n:\n    default_variant_id: a\n    variants: {}\n", "node_variants.n.variants", "no variant"),
    ("node_variants:\n  n:\n    default_variant_id: a\n    variants:\n      a: {}\n", "node_variants.n.variants.a.node",
     "give the variant's type"),
    ("node_variants:\n  n:\n    default_variant_id: a\n    variants:\n      a:" + _variant("echo.py", "\n          name: m"),
     "node_variants.n.variants.a.node.name", "takes its node's name"),
    ("node_variants:\n  n:\n    default_variant_id: a\n    variants:\n      a:" + _variant("echo.py") + "      b:"
     + _variant("nowhere.py"), "node_variants.n.variants.b.node.source.path", "node 'n' variant 'b'"),
    ("node_variants:\n  n:\n    default_variant_id: a\n    variants:\n      a:" + _variant("echo.py") + "      b:"
     + _variant("echo.py").replace("inputs.q", "m.output"), "node 'n' variant 'b' input 'x'", "unknown node 'm'"),
])
def test_a_broken_variant_fails_when_the_flow_loads(make_flow, tail, field, words):
    flow_dir = make_flow(FLOW_HEAD + "- name: n\n  use_variants: true\n" + tail, {"echo.py": ECHO})
    with pytest.raises((InvalidInput, NotFound)) as info:
        load_flow(flow_dir)
    assert info.value.field == field and words in info.value.message, info.value.message


def test_a_variant_that_closes_a_cycle_fails_when_the_flow_loads(make_flow):
    flow_dir = make_flow(FLOW_HEAD + """
- name: n
  use_variants: true
- name: m
  type: python
  source: {type: code, path: echo.py}
  inputs: {x: '${n.output}'}
node_variants:
  n:
    default_variant_id: a
    variants:
      a:""" + _variant("echo.py") + "      b:" + _variant("echo.py").replace("inputs.q", "m.output"),
        {"echo.py": ECHO})
    with pytest.raises(InvalidInput, match="cycle between nodes"):
        load_flow(flow_dir)


def test_use_variants_must_be_a_boolean(make_flow):
    flow_dir = make_flow(FLOW_HEAD + "- name: n\n  use_variants: 'yes please'\n", {"echo.py": ECHO})
    with pytest.raises(InvalidInput) as info:
        load_flow(flow_dir)
    assert info.value.field == "nodes[0].use_variants"


def test_a_batch_run_per_variant_then_their_evaluations_compared(flow_dir, llm_server):
    provider = variant_connection(llm_server)
    data = flow_dir / "data.jsonl"
    base = {}
    for variant in ("variant_0", "variant_1", "variant_2"):
        record = start_run(flow_dir, data=data, variant="${chat.%s}" % variant)
        assert record.name.startswith(f"prompt_variants_{variant}_")
        meta = BatchRun(record, connection_provider=provider).execute()
        assert meta["status"] == "Completed" and meta["completed_lines"] == 3 and meta["variant"] == "${chat.%s}" % variant
        base[variant] = record.name
    sent = [(r["body"]["messages"][0]["content"], r["body"]["max_tokens"]) for r in llm_server.requests]
    assert sorted(set(sent)) == sorted((SYSTEMS[v], MAX_TOKENS[v]) for v in SYSTEMS) and len(sent) == 9

    evals = []
    for variant, name in base.items():
        record = start_run(VARIANT_EVAL_FLOW, data=data, base_run=name, name=f"eval-{variant}",
                           column_mapping=["answer=${run.outputs.answer}", "place=${data.place}"])
        assert BatchRun(record).execute()["status"] == "Completed"
        evals.append(record.name)

    out = compare(evals + [base["variant_0"]])
    assert out["metrics"] == ["named", "json", "mean_length"]
    runs = {r["name"]: r for r in out["runs"]}
    assert [runs[f"eval-{v}"]["variant"] for v in SYSTEMS] == ["${chat.%s}" % v for v in SYSTEMS]
    assert runs["eval-variant_1"]["base_run"] == base["variant_1"]
    # the echo server answers with the prompt it got: only variant_1's prompt says JSON
    assert [runs[f"eval-{v}"]["metrics"]["json"] for v in SYSTEMS] == [0.0, 1.0, 0.0]
    lengths = [runs[f"eval-{v}"]["metrics"]["mean_length"] for v in SYSTEMS]
    assert lengths[0] < lengths[1] < lengths[2]
    assert all(runs[f"eval-{v}"]["metrics"]["named"] == 1.0 for v in SYSTEMS)  # each question names its place
    assert runs[base["variant_0"]]["metrics"] == {} and runs[base["variant_0"]]["completed_lines"] == 3


def test_compare_names_a_missing_run(flow_dir):
    with pytest.raises(NotFound, match="no flow run named 'nope'"):
        compare(["nope"])
    with pytest.raises(InvalidInput, match="at least one run"):
        compare([])


def test_a_batch_run_refuses_an_unknown_variant_before_it_starts(flow_dir):
    with pytest.raises(InvalidInput, match="no variant 'v9'"):
        start_run(flow_dir, data=flow_dir / "data.jsonl", variant="${chat.v9}")
    assert RunRecord.all() == []
