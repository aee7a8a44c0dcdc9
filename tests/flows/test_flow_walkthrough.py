from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from forgeflow.errors import NotFound, UpstreamError
from forgeflow.flows.connection_yaml import load_connection_yaml
from forgeflow.flows.loader import load_flow
from forgeflow.flows.executor import run_flow, write_details

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "walkthrough-chat-flow"


@pytest.fixture
def example(tmp_path) -> Path:
    dest = tmp_path / "walkthrough-chat-flow"
    shutil.copytree(EXAMPLE, dest)
    return dest


def provider_for(server, key=None):
    def provide(name: str) -> dict | None:
        if name != "custom-phi3":
            return None
        return {"name": name, "type": "custom", "configs": {"endpoint": server.url}, "secrets": {"key": key or server.key}}

    return provide


def test_example_matches_the_walkthrough():
    flow = load_flow(EXAMPLE)
    assert flow.inputs["input_data"].default == "Who founded Microsoft?"
    assert str(flow.outputs["answer"].reference) == "${integrate_with_promptflow.output}"
    node = flow.nodes["integrate_with_promptflow"]
    assert node.type == "python" and node.path.name == "integrate_with_promptflow.py"
    assert node.inputs["connection"] == "custom-phi3"
    src = (EXAMPLE / "integrate_with_promptflow.py").read_text()
    assert "from promptflow import tool" in src and "from promptflow.connections import CustomConnection" in src
    conn = load_connection_yaml(EXAMPLE / "connection.yaml")
    assert conn["name"] == "custom-phi3" and set(conn["configs"]) == {"endpoint"} and set(conn["secrets"]) == {"key"}


def test_walkthrough_flow_calls_the_endpoint(example, scoring_server):
    result = run_flow(example, {"input_data": "Who founded Microsoft?"}, connection_provider=provider_for(scoring_server))

    assert result.outputs == {"answer": "Bill Gates and Paul Allen founded Microsoft."}
    assert result.node_results["integrate_with_promptflow"]["status"] == "Completed"
    [req] = scoring_server.requests
    assert req["headers"]["Authorization"] == "Bearer k-primary-123"
    assert req["headers"]["Content-Type"] == "application/json"
    body = req["body"]
    assert body["input_data"]["input_string"] == [{"role": "user", "content": "Who founded Microsoft?"}]
    assert body["input_data"]["parameters"] == {"temperature": 0.7, "max_new_tokens": 128}

    path = write_details(example, result)
    assert path.parent.parent == example / ".forgeflow" / "runs"
    details = json.loads(path.read_text())
    assert details["outputs"]["answer"] == result.outputs["answer"]
    assert details["inputs"] == {"input_data": "Who founded Microsoft?"}
    assert details["node_results"]["integrate_with_promptflow"]["duration_s"] >= 0
    assert "k-primary-123" not in path.read_text()


def test_default_input_is_used(example, scoring_server):
    run_flow(example, {}, connection_provider=provider_for(scoring_server))
    assert scoring_server.requests[0]["body"]["input_data"]["input_string"][0]["content"] == "Who founded Microsoft?"


def test_wrong_key_fails_naming_the_node(example, scoring_server):
    with pytest.raises(UpstreamError) as info:
        run_flow(example, {"input_data": "hi"}, connection_provider=provider_for(scoring_server, key="wrong"))
    assert "integrate_with_promptflow" in info.value.message and "401" in info.value.message
    assert "raise_for_status" in info.value.details
    assert info.value.result.node_results["integrate_with_promptflow"]["status"] == "Failed"


def test_unknown_connection_names_connection_and_node(example, scoring_server):
    with pytest.raises(NotFound) as info:
        run_flow(example, {"input_data": "hi"}, connection_provider=lambda name: None)
    assert "custom-phi3" in info.value.message and "integrate_with_promptflow" in info.value.message
    with pytest.raises(NotFound, match="custom-phi3"):
        run_flow(example, {"input_data": "hi"})
    assert scoring_server.requests == []
