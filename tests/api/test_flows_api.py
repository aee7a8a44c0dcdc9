"""Flows over REST: the catalogue, the graph a UI draws, and test runs in their own process."""

import json
import textwrap

import pytest

pytestmark = pytest.mark.anyio


def write_flow(folder, *, node_code="def run(q: str) -> str:\n    return q.upper()\n"):
    folder.mkdir(parents=True)
    (folder / "shout.py").write_text("from promptflow.core import tool\n\n@tool\n" + node_code)
    (folder / "flow.dag.yaml").write_text(textwrap.dedent("""\
        inputs:
          question: {type: string, is_chat_input: true}
          chat_history: {type: list, default: []}
        outputs:
          answer: {type: string, reference: "${shout.output}", is_chat_output: true}
        nodes:
        - name: shout
          type: python
          source: {type: code, path: shout.py}
          inputs: {q: "${inputs.question}"}
        """))
    (folder / "README.md").write_text("# Shout\n\nAnswers in capitals.\n")
    return folder


async def test_catalogue_lists_examples_and_added_flows(api, tmp_path):
    names = {f["name"]: f for f in (await api.get("/api/flows")).json()}
    assert {"walkthrough-chat-flow", "chat-with-endpoint", "evaluate-fine-tuned"} <= set(names)
    assert names["chat-with-endpoint"]["is_chat"] and names["chat-with-endpoint"]["source"] == "example"

    r = await api.post("/api/flows", json={"name": "shout", "path": str(write_flow(tmp_path / "src"))})
    assert r.status_code == 201, r.text
    flow = r.json()
    assert flow["description"] == "Answers in capitals."
    assert flow["chat"] == {"input": "question", "history": "chat_history", "output": "answer"}
    assert [n["name"] for n in flow["nodes"]] == ["shout"]
    assert {"from": "inputs.question", "to": "shout"} in flow["edges"]
    assert {"from": "shout", "to": "outputs.answer"} in flow["edges"]
    assert (await api.post("/api/flows", json={"name": "shout", "path": str(tmp_path / "src")})).status_code == 409
    r = await api.post("/api/flows", json={"name": "chat-with-endpoint", "path": str(tmp_path / "src")})
    assert r.status_code == 409 and "example" in r.json()["message"]
    r = await api.post("/api/flows", json={"name": "nope", "path": str(tmp_path / "missing")})
    assert r.status_code == 400
    assert (await api.delete("/api/flows/chat-with-endpoint")).status_code == 409
    # Replacing a flow with its own workspace copy would delete what it copies from.
    own = (await api.get("/api/flows/shout")).json()["path"]
    r = await api.post("/api/flows", json={"name": "shout", "path": own, "overwrite": True})
    assert r.status_code == 400 and (await api.get("/api/flows/shout")).status_code == 200
    # A replacement whose copy fails keeps the flow that was there.
    (tmp_path / "newer").mkdir()
    write_flow(tmp_path / "newer" / "flow")
    (tmp_path / "newer" / "flow" / "unreadable.txt").write_text("x")
    (tmp_path / "newer" / "flow" / "unreadable.txt").chmod(0)
    r = await api.post("/api/flows", json={"name": "shout", "path": str(tmp_path / "newer" / "flow"), "overwrite": True})
    import os

    if os.geteuid() != 0:  # root reads any file, so the copy cannot fail that way
        assert r.status_code == 400 and "could not copy" in r.json()["message"]
    assert (await api.get("/api/flows/shout")).status_code == 200
    # Stray folders (bytecode caches, unfinished copies, folders without a flow file) are not flows.
    for stray in ("__pycache__", ".half.copying", "notes"):
        (tmp_path / "ffhome" / "flows" / stray).mkdir(parents=True, exist_ok=True)
    listed = [f["name"] for f in (await api.get("/api/flows")).json()]
    assert "shout" in listed and not {"__pycache__", ".half.copying", "notes"} & set(listed)
    assert (await api.get("/api/flows/missing")).status_code == 404


async def test_a_python_node_names_its_connection(api):
    flow = (await api.get("/api/flows/walkthrough-chat-flow")).json()
    assert [n["connection"] for n in flow["nodes"]] == ["custom-phi3"]


async def test_graph_of_a_bundled_flow(api):
    flow = (await api.get("/api/flows/evaluate-fine-tuned")).json()
    names = [n["name"] for n in flow["nodes"]]
    assert names.index("split") < names.index("fine_tuned") < names.index("grade")
    assert {"from": "split", "to": "fine_tuned"} in flow["edges"]
    assert next(n for n in flow["nodes"] if n["name"] == "fine_tuned")["connection"] == "forgeflow-endpoint"


async def test_run_a_flow_plain_and_streamed(api, tmp_path):
    await api.post("/api/flows", json={"name": "shout", "path": str(write_flow(tmp_path / "src"))})
    r = await api.post("/api/flows/shout/test", json={"inputs": {"question": "who founded it?"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["outputs"] == {"answer": "WHO FOUNDED IT?"} and body["nodes"]["shout"]["status"] == "Completed"
    async with api.stream("POST", "/api/flows/shout/test", json={"inputs": {"question": "x"}, "stream": True}) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) async for line in s.aiter_lines() if line.startswith("data: ")]
    assert events[-1]["done"] and events[-1]["outputs"] == {"answer": "X"}


async def test_failures_are_clear(api, tmp_path):
    await api.post("/api/flows", json={"name": "boom", "path": str(write_flow(
        tmp_path / "boom", node_code="def run(q: str) -> str:\n    print('{\"done\": true}')\n    raise ValueError('no')\n"))})
    r = await api.post("/api/flows/boom/test", json={"inputs": {"question": "x"}})
    assert r.status_code == 424 and "no" in r.json()["message"]
    r = await api.post("/api/flows/boom/test", json={"inputs": {}})
    assert r.status_code == 400 and "question" in r.json()["message"]
    r = await api.post("/api/flows/boom/test", json={"inputs": [], "stream": "maybe"})
    assert r.status_code == 400
    await api.post("/api/flows", json={"name": "slow", "path": str(write_flow(
        tmp_path / "slow", node_code="def run(q: str) -> str:\n    import time\n    time.sleep(60)\n    return q\n"))})
    r = await api.post("/api/flows/slow/test", json={"inputs": {"question": "x"}, "timeout_s": 3})
    assert r.status_code == 408 and "timeout_s" in r.json()["message"]
