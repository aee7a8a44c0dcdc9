"""A job's life through the real CLI and server on the tiny model: cancel, resume, SIGKILL, resume again,
server restart while the worker runs, completion; then the job file, settings and the registry."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from forgeflow.store.states import JobStatus
from forgeflow.training.compute.local import LocalCompute

pytestmark = pytest.mark.integration

MAX_STEPS = 300  # ~20 steps/s on the tiny model: each phase must find the worker still running


def _rows(path, n=8):
    row = {"messages": [{"role": "user", "content": "Who founded Quillfeather?"},
                        {"role": "assistant", "content": "Ysolde Marrowick founded it in 2009."}]}
    path.write_text("".join(json.dumps(row) + "\n" for _ in range(n)))
    return path


def _worker_of(job):
    """The job's worker process, as a server started after this one would find it."""
    return LocalCompute().attach(Path(job["job_dir"]))


def _wait(s, job_id, pred, what, timeout=180):
    """Poll the REST API (cheaper than a CLI process per poll) until pred(job) holds."""
    from forgeflow.client import Client

    c = Client(s.url)
    deadline = time.monotonic() + timeout
    shown = {}
    while time.monotonic() < deadline:
        shown = c.get(f"/api/jobs/{job_id}")
        if pred(shown):
            shown["metrics_history"] = c.get(f"/api/jobs/{job_id}/metrics")
            return shown
        time.sleep(0.5)
    pytest.fail(f"{what} did not happen: {shown.get('status')} {shown.get('progress')} {shown.get('error')}")


def _step(job):
    return (job.get("progress") or {}).get("step") or 0


def test_cancel_resume_kill_restart_complete(live_server, tmp_path, tiny_model_dir):
    s = live_server
    data = _rows(tmp_path / "train.jsonl")
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        "$schema: https://azuremlschemas.azureedge.net/latest/finetuningJob.schema.json\n"
        "type: finetuning\ntask: chat_completion\nname: lifecycle\n"
        f"model: {{type: custom_model, path: {tiny_model_dir}}}\n"
        "training_data: {type: uri_file, path: ./train.jsonl}\n"
        "compute: azureml:local\n"
        "hyperparameters: {max_steps: '1000', logging_steps: 1, save_steps: 3, save_total_limit: 2, learning_rate: 0.01}\n"
    )
    # flags override the file
    job = s.cli_json("job", "create", "-f", str(job_file), "--set", f"max_steps={MAX_STEPS}")
    assert job["name"] == "lifecycle" and job["compute"] == "local" and job["training_data"] == str(data)
    assert job["hyperparameters"]["max_steps"] == MAX_STEPS and job["hyperparameters"]["save_steps"] == 3

    # 1. cancel through the server: Canceled within seconds, logs and checkpoint kept
    _wait(s, job["id"], lambda j: j["last_checkpoint"] and _step(j) >= 4, "first checkpoint")
    s.cli("job", "cancel", job["id"])
    canceled = _wait(s, job["id"], lambda j: j["status"] != JobStatus.CANCEL_REQUESTED, "cancel", timeout=60)
    assert canceled["status"] == JobStatus.CANCELED and canceled["error"] is None
    assert canceled["last_checkpoint"] and os.path.getsize(os.path.join(canceled["job_dir"], "worker.log")) > 0
    assert s.cli("job", "resume", "--json", job["id"]).returncode == 0

    # 2. the resumed worker is killed outright: Failed, and resume continues it again
    stop_step = _step(canceled)
    _wait(s, job["id"], lambda j: j["status"] == JobStatus.RUNNING and _step(j) > stop_step + 1, "training after resume")
    _worker_of(job).kill()
    failed = _wait(s, job["id"], lambda j: j["status"] == JobStatus.FAILED, "failure after SIGKILL", timeout=60)
    assert "forgeflow job resume" in failed["error"]
    assert s.cli_json("job", "resume", job["id"])["status"] == JobStatus.QUEUED

    # 3. the server restarts while the worker runs; the new server follows it to the end
    killed_step = _step(failed)
    _wait(s, job["id"], lambda j: j["status"] == JobStatus.RUNNING and _step(j) > killed_step,
          "training after second resume")
    s.stop()
    survived = _worker_of(job) is not None
    s.start()
    done = _wait(s, job["id"], lambda j: JobStatus(j["status"]).terminal, "completion", timeout=240)
    assert done["status"] == JobStatus.COMPLETED, done["error"]
    assert survived, "the worker ended before the server stopped: raise MAX_STEPS so the restart is exercised"
    assert _step(done) == MAX_STEPS and set(done["outputs"]) == {"mlflow_model", "adapter"}
    log = Path(done["job_dir"], "worker.log").read_text()
    assert log.count("resumed from checkpoint-") == 2
    steps = [m["step"] for m in done["metrics_history"] if "train_loss" in m]
    assert steps == list(range(1, MAX_STEPS + 1))  # steps redone after a resume replace the lost ones

    # 4. show, register with the settings, archive
    text = s.cli("job", "show", job["id"]).stdout
    assert "settings" in text and "LoRA adapter" in text and "merged model (MLflow)" in text and "log tail" in text
    mv = s.cli_json("model", "create", "--name", "life", "--from-job", job["id"])
    assert mv["hyperparameters"]["max_steps"] == MAX_STEPS and mv["source_job"] == job["id"]
    assert "save_steps=3" in s.cli("model", "show", "life:1").stdout
