"""Kill a worker, restart the server: state is kept and the message says what happened."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration


def _rows(path, n=40):
    row = {"messages": [{"role": "user", "content": "Who founded Quillfeather?"},
                        {"role": "assistant", "content": "Ysolde Marrowick founded it in 2009."}]}
    path.write_text("".join(json.dumps(row) + "\n" for _ in range(n)))
    return path


def test_killed_worker_fails_the_job_and_keeps_its_log(live_server, tmp_path, tiny_model_dir):
    s = live_server
    data = _rows(tmp_path / "train.jsonl")
    job = s.cli_json("job", "create", "--model", str(tiny_model_dir), "--training-data", str(data),
                     "--set", "max_steps=100000", "--set", "logging_steps=1")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        shown = s.cli_json("job", "show", job["id"])
        if shown["status"] == "Running" and (shown.get("progress") or {}).get("step", 0) > 0:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"job never ran: {shown}")
    pid = int((Path(shown["job_dir"]) / "worker.pid").read_text().split()[0])  # where local compute records its worker
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        shown = s.cli_json("job", "show", job["id"])
        if shown["status"] == "Failed":
            break
        time.sleep(0.5)
    assert shown["status"] == "Failed" and shown["error"]
    assert os.path.getsize(os.path.join(shown["job_dir"], "worker.log")) > 0


def test_deployment_comes_back_after_server_restart(live_server, tiny_model_dir):
    s = live_server
    s.cli("online-endpoint", "create", "--name", "keep-me")
    dep = s.cli_json("online-deployment", "create", "--name", "blue", "--endpoint-name", "keep-me",
                     "--model", str(tiny_model_dir), "--all-traffic")
    assert dep["provisioning_state"] == "Succeeded"
    keys = s.cli_json("online-endpoint", "get-credentials", "--name", "keep-me")
    s.stop()
    s.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        dep = s.cli_json("online-deployment", "show", "--name", "blue", "--endpoint-name", "keep-me")
        if dep["provisioning_state"] == "Succeeded":
            break
        time.sleep(0.5)
    assert dep["provisioning_state"] == "Succeeded", dep
    assert s.cli_json("online-endpoint", "get-credentials", "--name", "keep-me") == keys
    body = {"input_data": {"input_string": [{"role": "user", "content": "hi"}], "parameters": {"max_new_tokens": 4}}}
    r = httpx.post(f"{s.url}/endpoints/keep-me/score", json=body,
                   headers={"Authorization": f"Bearer {keys['primary_key']}"}, timeout=60)
    assert r.status_code == 200, r.text
