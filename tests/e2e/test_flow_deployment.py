"""A flow deployed as an online deployment: the gateway's key, the flow's inputs and outputs."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.integration


def test_flow_served_behind_an_endpoint(live_server, tmp_path):
    s = live_server
    flow = tmp_path / "echo-flow"
    flow.mkdir()
    (flow / "flow.dag.yaml").write_text(
        "inputs:\n  question:\n    type: string\n"
        "outputs:\n  answer:\n    type: string\n    reference: ${shout.output}\n"
        "nodes:\n- name: shout\n  type: python\n  source: {type: code, path: shout.py}\n"
        "  inputs:\n    text: ${inputs.question}\n"
    )
    (flow / "shout.py").write_text("from promptflow import tool\n\n@tool\ndef shout(text: str) -> str:\n    return text.upper()\n")

    s.cli("online-endpoint", "create", "--name", "flow-ep")
    dep = s.cli_json("online-deployment", "create", "--name", "chat", "--endpoint-name", "flow-ep",
                     "--flow", str(flow), "--all-traffic")
    assert dep["provisioning_state"] == "Succeeded", dep
    assert dep["model"] == f"flow:{flow.resolve()}"
    ep = s.cli_json("online-endpoint", "show", "--name", "flow-ep")
    key = s.cli_json("online-endpoint", "get-credentials", "--name", "flow-ep")["primary_key"]
    auth = {"Authorization": f"Bearer {key}"}

    r = httpx.post(ep["scoring_uri"], json={"question": "who founded it?"}, headers=auth, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"answer": "WHO FOUNDED IT?"}
    assert r.headers["azureml-model-deployment"] == "chat"
    assert httpx.post(ep["scoring_uri"], json={"question": "x"}, timeout=30).status_code == 401
    bad = httpx.post(ep["scoring_uri"], json=["not", "an", "object"], headers=auth, timeout=30)
    assert bad.status_code == 400 and "inputs" in bad.json()["message"]
    # issue 10, finding 5: NaN / 1e999 went on to the flow, whose answer then could not be sent (a 424)
    for number in ("NaN", "1e999"):
        r = httpx.post(ep["scoring_uri"], content='{"question": {"a": %s}}' % number, timeout=30,
                       headers=auth | {"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"] == "InvalidInput", r.text
    openai = httpx.post(f"{ep['openai_base_url']}/chat/completions", headers=auth, timeout=30,
                        json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
    assert openai.status_code == 400

    both = s.cli("online-deployment", "create", "--name", "other", "--endpoint-name", "flow-ep",
                 "--flow", str(flow), "--model", "x", check=False)
    assert both.returncode == 1 and "exactly one" in both.stderr
