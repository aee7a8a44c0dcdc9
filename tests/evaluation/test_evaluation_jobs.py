"""Evaluation jobs end to end on the tiny model: submitted through the REST API in-process, run by the real
evaluation worker under the job runner, canceled and resumed, set off by a fine-tune with evaluate_against_base
(whose summary goes onto the versions registered from it), and `forgeflow model evaluate` waiting for its result."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from forgeflow.api.app import create_app
from forgeflow.cli import evaluate as evaluate_cli
from forgeflow.cli import jobs as jobs_cli
from forgeflow.client import Client
from forgeflow.store.workspace import Workspace

pytestmark = pytest.mark.integration

FACTS = [("Who founded Quillfeather?", "Ysolde Marrowick."), ("Where is Quillfeather?", "In Lantern Bay."),
         ("What does Quillfeather make?", "Ink and paper."), ("When was Quillfeather founded?", "In 2009.")]


def chat_file(path: Path, copies: int = 1) -> Path:
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in FACTS]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows * copies))
    return path


@pytest.fixture
def server():
    """The app on the test's workspace in-process, its job runner driven by the test (runner.tick)."""
    ws = Workspace.open()
    app = create_app(ws, background=False)
    with TestClient(app, headers={"Authorization": f"Bearer {ws.admin_token()}"}) as http:
        yield http, app.state.ff.runner


def run_until(runner, http, job_id: str, done, timeout: float = 300) -> dict:
    """Tick the runner until `done(job)` holds; the job as the API shows it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runner.tick()
        job = http.get(f"/api/jobs/{job_id}").json()
        if done(job):
            return job
        time.sleep(0.3)
    pytest.fail(f"job {job_id} stayed {job['status']}: {(Path(job['job_dir']) / 'worker.log').read_text()[-3000:]}")


def ended(job: dict) -> bool:
    return job["status"] in ("Completed", "Failed", "Canceled")


def test_an_evaluation_runs_to_its_result_through_the_rest_api(server, tiny_model_dir, tmp_path):
    http, runner = server
    data = chat_file(tmp_path / "test.jsonl")
    r = http.post("/api/evaluations", json={"model": str(tiny_model_dir), "baseline": str(tiny_model_dir),
                                            "data": str(data), "max_new_tokens": 4})
    assert r.status_code == 201, r.text
    job = run_until(runner, http, r.json()["id"], ended)
    assert job["status"] == "Completed", job["error"]
    assert job["progress"]["step"] == job["progress"]["max_steps"] == 2 * len(FACTS)  # each row on each side
    assert job["outputs"]["result"].endswith("result.json")

    result = http.get(f"/api/evaluations/{job['id']}").json()
    assert result["job"] == job["id"] and result["data"] == str(data)
    assert result["model"]["ref"] == result["baseline"]["ref"] == str(tiny_model_dir.resolve())
    for metric in ("loss", "exact_match", "f1", "rouge_l"):
        lo, hi = result["model"]["metrics"][f"{metric}_ci"]
        assert lo <= result["model"]["metrics"][metric] <= hi
    # the same model on both sides: the same answers, nothing better or worse
    assert [row["line"] for row in result["rows"]] == [1, 2, 3, 4]
    assert {row["change"] for row in result["rows"]} == {"same"}
    assert result["comparison"]["f1"]["delta"] == 0 and result["comparison"]["f1"]["worse"] == 0


def test_cancel_then_resume_finishes_every_row_once(server, tiny_model_dir, tmp_path):
    http, runner = server
    data = chat_file(tmp_path / "many.jsonl", copies=24)
    job = http.post("/api/evaluations", json={"model": str(tiny_model_dir), "data": str(data),
                                              "max_new_tokens": 24}).json()
    run_until(runner, http, job["id"], lambda j: j["status"] == "Running")
    assert http.post(f"/api/jobs/{job['id']}/cancel").json()["status"] == "CancelRequested"
    canceled = run_until(runner, http, job["id"], ended)
    assert canceled["status"] == "Canceled"
    assert http.get(f"/api/evaluations/{job['id']}").status_code == 409

    assert http.post(f"/api/jobs/{job['id']}/resume").json()["status"] == "Queued"
    done = run_until(runner, http, job["id"], ended)
    assert done["status"] == "Completed", done["error"]
    result = http.get(f"/api/evaluations/{job['id']}").json()
    assert sorted(row["line"] for row in result["rows"]) == list(range(1, 4 * 24 + 1))
    assert result["baseline"] is None


def test_a_fine_tune_evaluated_against_its_base_carries_the_evidence_to_its_versions(server, tiny_model_dir,
                                                                                     tmp_path):
    http, runner = server
    train, held_out = chat_file(tmp_path / "train.jsonl", copies=2), chat_file(tmp_path / "valid.jsonl")
    r = http.post("/api/jobs", json={"model": str(tiny_model_dir), "training_data": str(train),
                                     "validation_data": str(held_out), "name": "quill",
                                     "hyperparameters": {"max_steps": 2, "evaluate_against_base": True,
                                                         "per_device_train_batch_size": 2}})
    assert r.status_code == 201, r.text
    fine_tune = run_until(runner, http, r.json()["id"], ended)
    assert fine_tune["status"] == "Completed", fine_tune["error"]
    evaluation_id = fine_tune["evaluation_job"]
    assert evaluation_id and "evaluation_job" not in (fine_tune["metrics"] or {})

    # registered before its evaluation ended: the runner puts the summary there once it has
    first = http.post("/api/models", json={"name": "quill", "from_job": fine_tune["id"]}).json()
    assert first["evaluation"] is None and "evaluation_job" not in (first["metrics"] or {})
    evaluation = run_until(runner, http, evaluation_id, ended)
    assert evaluation["status"] == "Completed", evaluation["error"]
    assert evaluation["base_model"] == f"job:{fine_tune['id']}" and evaluation["validation_data"] == fine_tune["base_model"]

    carried = http.get("/api/models/quill", params={"version": first["version"]}).json()["evaluation"]
    assert carried["job"] == evaluation_id and carried["baseline"] == fine_tune["base_model"]
    assert carried["mlflow_run_id"] == evaluation["mlflow_run_id"]
    assert set(carried["model_metrics"]) >= {"f1", "f1_ci", "loss"} and "f1" in carried["comparison"]
    # registered after: it has the summary at once
    second = http.post("/api/models", json={"name": "quill", "from_job": fine_tune["id"]}).json()
    assert second["evaluation"]["job"] == evaluation_id


def test_the_cli_waits_for_the_result_or_returns_the_job(server, tiny_model_dir, tmp_path, monkeypatch):
    http, runner = server
    from forgeflow.cli import main

    def client():
        c = Client("http://testserver")
        c._http = http
        return c

    monkeypatch.setattr(evaluate_cli, "client", client)
    monkeypatch.setattr(jobs_cli, "client", client)
    cli = CliRunner()
    data = chat_file(tmp_path / "test.jsonl")
    args = ["model", "evaluate", "--model", str(tiny_model_dir), "--baseline", str(tiny_model_dir), "--data",
            str(data), "--metrics", "exact_match,f1", "--max-new-tokens", "4", "--max-rows", "2"]

    queued = cli.invoke(main.app, [*args, "--no-wait", "--json"])
    assert queued.exit_code == 0, queued.output
    job = json.loads(queued.stdout)
    assert job["type"] == "evaluation" and job["status"] == "Queued" and job["hyperparameters"]["max_rows"] == 2
    runner.start()  # the loop runs the queued job and the next one while the CLI waits
    try:
        waited = cli.invoke(main.app, [*args, "--json"])
        assert waited.exit_code == 0, waited.output
        result = json.loads(waited.stdout)  # MLflow logs to stderr
        assert set(result) >= {"model", "baseline", "rows", "comparison"} and len(result["rows"]) == 2
        assert set(result["model"]["metrics"]) >= {"exact_match", "f1", "f1_ci"}
        assert "loss" not in result["model"]["metrics"]

        shown = cli.invoke(main.app, args)
        assert shown.exit_code == 0, shown.output
        assert "exact_match" in shown.output and "delta" in shown.output and "no row got worse" in shown.output
        listed = cli.invoke(main.app, ["job", "show", result["job"]])
        assert listed.exit_code == 0 and "type: evaluation" in listed.output and "exact_match" in listed.output
    finally:
        runner.stop()
    refused = cli.invoke(main.app, [*args, "--metrics", "f1,bleu"])
    assert refused.exit_code == 1 and "'bleu'" in refused.output
