"""The whole walkthrough through the real CLI and a real server on loopback, on the tiny model."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from forgeflow.flows.examples import walkthrough_flow_dir

pytestmark = pytest.mark.integration


def _chat(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def test_prepare_finetune_register_deploy_connect_chat(live_server, tmp_path, tiny_model_dir):
    s = live_server
    assert s.cli("serve", "status").returncode == 0

    # 2. data: the shipped sample, 80/20
    data = tmp_path / "data"
    prep = s.cli_json("data", "prepare", "--dataset", "sample", "--out", str(data))
    assert prep["train_rows"] > prep["test_rows"] > 0
    assert s.cli("data", "validate", str(data / "train_data.jsonl")).returncode == 0
    small_train = tmp_path / "train.jsonl"
    small_train.write_text("".join(json.dumps(_chat("Who founded Quillfeather?", "Ysolde Marrowick.")) + "\n" for _ in range(8)))

    # 3. fine-tune the tiny model (a local HF folder used as base by path)
    job = s.cli_json("job", "create", "--type", "finetuning", "--model", str(tiny_model_dir),
                     "--training-data", str(small_train), "--validation-data", str(small_train),
                     "--set", "max_steps=6", "--set", "learning_rate=5e-3", "--set", "logging_steps=1",
                     "--name", "tiny-ft", "--stream", timeout=600)
    assert job["status"] == "Completed", job
    shown = s.cli_json("job", "show", job["id"])
    losses = [m["train_loss"] for m in shown["metrics_history"] if "train_loss" in m]
    assert losses and losses[-1] < losses[0]
    assert any(j["id"] == job["id"] for j in s.cli_json("job", "list"))

    # 4. register twice -> versions 1 and 2
    v1 = s.cli_json("model", "create", "--name", "tiny-chat", "--from-job", job["id"])
    v2 = s.cli_json("model", "create", "--name", "tiny-chat", "--from-job", job["id"])
    assert (v1["version"], v2["version"]) == ("1", "2")
    assert s.cli_json("model", "show", "tiny-chat:1")["source_job"] == job["id"]

    # 5. deploy behind a key-checked endpoint
    s.cli("online-endpoint", "create", "--name", "tiny-ep")
    dep = s.cli_json("online-deployment", "create", "--name", "blue", "--endpoint-name", "tiny-ep", "--model", "tiny-chat:1")
    assert dep["provisioning_state"] == "Succeeded", dep
    s.cli("online-endpoint", "update", "--name", "tiny-ep", "--traffic", "blue=100")
    ep = s.cli_json("online-endpoint", "show", "--name", "tiny-ep")
    assert ep["traffic"] == {"blue": 100}
    keys = s.cli_json("online-endpoint", "get-credentials", "--name", "tiny-ep")

    body = {"input_data": {"input_string": [{"role": "user", "content": "Who founded Quillfeather?"}],
                           "parameters": {"temperature": 0.7, "top_p": 0.9, "do_sample": True, "max_new_tokens": 8}},
            "params": {}}
    r = httpx.post(ep["scoring_uri"], json=body, headers={"Authorization": f"Bearer {keys['primary_key']}"}, timeout=60)
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["output"], str) and set(r.json()) == {"output"}
    assert r.headers["azureml-model-deployment"] == "blue"
    assert httpx.post(ep["scoring_uri"], json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    r = httpx.post(ep["scoring_uri"], json={"input": 1}, headers={"Authorization": f"Bearer {keys['secondary_key']}"})
    assert r.status_code == 400 and "input_data" in r.json()["message"]

    req = tmp_path / "request.json"
    req.write_text(json.dumps(body))
    out = s.cli_json("online-endpoint", "invoke", "--name", "tiny-ep", "--request-file", str(req))
    assert "output" in out

    # 6. connect the walkthrough's flow, unchanged, and chat through it
    s.cli("connection", "create", "--name", "custom-phi3", "--from-endpoint", "tiny-ep")
    conn = s.cli_json("connection", "show", "--name", "custom-phi3")
    assert conn["secrets"] == {"key": "******"} and conn["configs"]["endpoint"] == ep["scoring_uri"]
    flow = tmp_path / "flow"
    shutil.copytree(walkthrough_flow_dir(), flow)
    res = s.cli_json("flow", "test", "--flow", str(flow), "--inputs", "input_data=Who founded Quillfeather?")
    assert isinstance(res["outputs"]["answer"], str)

    # a deployment of a model version that does not exist is refused, nothing else changes
    bad = s.cli("online-deployment", "create", "--name", "green", "--endpoint-name", "tiny-ep", "--model", "tiny-chat:9",
                check=False)
    assert bad.returncode == 1 and "version 9" in bad.stderr
    assert s.cli_json("online-endpoint", "show", "--name", "tiny-ep")["deployments"] == ["blue"]

    # deleting the endpoint stops its model server
    pid = s.cli_json("online-deployment", "show", "--name", "blue", "--endpoint-name", "tiny-ep")["instances"][0]["pid"]
    s.cli("online-endpoint", "delete", "--name", "tiny-ep", "--yes")
    from forgeflow.processes import pid_alive

    assert not pid_alive(pid)


def test_commands_without_a_server_say_how_to_start_one(forgeflow_home):
    import os
    import subprocess
    import sys

    from forgeflow.processes import free_port

    port = free_port()
    env = dict(os.environ, FORGEFLOW_HOME=str(forgeflow_home), FORGEFLOW_URL=f"http://127.0.0.1:{port}")
    res = subprocess.run([sys.executable, "-m", "forgeflow.cli.main", "job", "list"], env=env, capture_output=True, text=True)
    assert res.returncode == 1
    assert "forgeflow serve --detach" in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2
