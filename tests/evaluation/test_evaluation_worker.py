"""The evaluation worker as a real process on the tiny model: result.json and rows.jsonl, resume, cancel, failures,
MLflow and the registered version's evaluation tag, and a better fine-tune ranked above a worse one."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eval_fixtures import chat_rows, write_jsonl, write_python_judge

from forgeflow.evaluation.worker import run_job
from forgeflow.training.jobs import EVALUATION_METRICS, EvaluatedModel, EvaluationSpec

SRC = Path(__file__).resolve().parents[2] / "src"
ROWS = chat_rows()


def run_worker(job_dir: Path, home: Path, *, wait: bool = True) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(SRC), FORGEFLOW_HOME=str(home), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "forgeflow.evaluation.worker", str(job_dir)], env=env,
                            stdout=open(job_dir / "worker.log", "w"), stderr=subprocess.STDOUT)
    if wait:
        proc.wait(timeout=300)
    return proc


def status(job_dir: Path) -> dict:
    return json.loads((job_dir / "status.json").read_text())


def rows_done(job_dir: Path) -> list[dict]:
    path = job_dir / "rows.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def evaluated(eval_models, tmp_path_factory):
    """A registered fine-tune (`tuned:1`, the better model) evaluated against the worse one with every metric."""
    root = tmp_path_factory.mktemp("evaluated")
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FORGEFLOW_HOME", str(home))
        from forgeflow.registry import models
        from forgeflow.store.home import Paths

        version = models.register("tuned", eval_models.better)
        uri = Paths.current().mlflow_uri
    job_dir = root / "job"
    job_dir.mkdir()
    spec = EvaluationSpec(
        job_id="eval-1", name="tuned vs worse", model=EvaluatedModel(version.ref, version.path),
        baseline=EvaluatedModel("worse", str(eval_models.worse)), data=str(write_jsonl(root / "test.jsonl", ROWS)),
        mlflow_tracking_uri=uri, mlflow_artifact_location=str(root / "artifacts"), metrics=EVALUATION_METRICS,
        judge_flow=str(write_python_judge(root / "judge")),
        max_new_tokens=12, batch_size=3, seed=7)
    spec.write(job_dir)
    proc = run_worker(job_dir, home)
    assert proc.returncode == 0, (job_dir / "worker.log").read_text()
    return {"job_dir": job_dir, "home": home, "spec": spec, "uri": uri,
            "result": json.loads((job_dir / "result.json").read_text())}


def test_result_has_both_sides_intervals_comparison_and_rows(evaluated):
    result, job_dir = evaluated["result"], evaluated["job_dir"]
    st = status(job_dir)
    assert st["status"] == "Completed" and st["step"] == st["max_steps"] == 2 * len(ROWS) and st["mlflow_run_id"]
    assert set(result) == {"job", "data", "model", "baseline", "comparison", "rows"} and result["job"] == "eval-1"
    assert result["model"]["ref"] == "tuned:1" and result["baseline"]["ref"] == "worse"
    for side in ("model", "baseline"):
        metrics = result[side]["metrics"]
        for name in (*EVALUATION_METRICS, "perplexity"):
            lo, hi = metrics[f"{name}_ci"]
            assert lo <= metrics[name] <= hi, (side, name)
        assert metrics["rows"] == len(ROWS) and metrics["truncated_prompts"] == 0
    assert set(result["comparison"]) == set(EVALUATION_METRICS)
    for cmp in result["comparison"].values():
        assert cmp["better"] + cmp["worse"] + cmp["same"] == len(ROWS)
    assert [r["line"] for r in result["rows"]] == [1, 2, 3, 4]
    first = result["rows"][0]
    assert first["question"] == ROWS[0]["messages"][0]["content"]
    assert first["reference"] == ROWS[0]["messages"][1]["content"]
    assert {"answer", "loss", "exact_match", "f1", "rouge_l", "judge"} <= set(first["model"]) <= set(first["baseline"])
    assert first["change"] in ("better", "worse", "same")
    done = rows_done(job_dir)
    assert sorted((d["side"], d["index"]) for d in done) == sorted((s, i) for s in ("model", "baseline") for i in range(4))


def test_evaluate_ranks_the_trained_adapter_above_the_random_one(evaluated):
    result = evaluated["result"]
    model, baseline = result["model"]["metrics"], result["baseline"]["metrics"]
    assert model["loss"] < baseline["loss"] and model["perplexity"] < baseline["perplexity"]
    assert result["comparison"]["loss"]["better"] == len(ROWS) and result["comparison"]["loss"]["delta"] < 0
    assert result["comparison"]["loss"]["delta_ci"][1] < 0
    for name in ("exact_match", "f1", "rouge_l", "judge"):
        assert model[name] >= baseline[name], name


def test_mlflow_run_and_the_registered_version_keep_the_evaluation(evaluated, monkeypatch):
    from mlflow.tracking import MlflowClient

    run_id = status(evaluated["job_dir"])["mlflow_run_id"]
    client = MlflowClient(tracking_uri=evaluated["uri"])
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "forgeflow-evaluation"
    assert experiment.artifact_location.endswith(str(evaluated["job_dir"].parent / "artifacts"))
    assert run.data.metrics["model.loss"] == pytest.approx(evaluated["result"]["model"]["metrics"]["loss"])
    assert "baseline.f1" in run.data.metrics and run.info.status == "FINISHED"
    assert "result.json" in [a.path for a in client.list_artifacts(run_id)]

    monkeypatch.setenv("FORGEFLOW_HOME", str(evaluated["home"]))
    from forgeflow.registry import models

    evaluation = models.get_version("tuned:1").evaluation
    assert evaluation["job"] == "eval-1" and evaluation["baseline"] == "worse" and evaluation["finished_at"]
    assert evaluation["mlflow_run_id"] == run_id
    assert evaluation["model_metrics"]["loss"] == pytest.approx(evaluated["result"]["model"]["metrics"]["loss"],
                                                                abs=1e-4)
    assert evaluation["baseline_metrics"]["f1_ci"] and evaluation["comparison"]["loss"]["better"] == len(ROWS)


def test_a_resumed_job_skips_the_rows_already_done(evaluated, tmp_path):
    job_dir = tmp_path / "job"
    shutil.copytree(evaluated["job_dir"], job_dir)
    (job_dir / "result.json").unlink()
    kept = [dict(d, answer="REMEMBERED") for d in rows_done(job_dir)[:3]]
    write_jsonl(job_dir / "rows.jsonl", kept)
    dataclasses.replace(evaluated["spec"], resume=True).write(job_dir)
    proc = run_worker(job_dir, evaluated["home"])
    assert proc.returncode == 0, (job_dir / "worker.log").read_text()
    assert "3 of 8 already done" in (job_dir / "worker.log").read_text()
    assert len(rows_done(job_dir)) == 8 and status(job_dir)["mlflow_run_id"] == status(evaluated["job_dir"])[
        "mlflow_run_id"]
    result = json.loads((job_dir / "result.json").read_text())
    answers = [(side, i) for i, row in enumerate(result["rows"]) for side in ("model", "baseline")
               if row[side]["answer"] == "REMEMBERED"]
    assert sorted(answers) == sorted((d["side"], d["index"]) for d in kept)


def test_sigterm_cancels_at_the_next_row(eval_models, tmp_path):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    data = write_jsonl(tmp_path / "many.jsonl", ROWS * 50)
    EvaluationSpec(job_id="eval-2", name="cancel", model=EvaluatedModel("worse", str(eval_models.worse)),
                   baseline=None, data=str(data), mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                   metrics=("loss", "f1"), max_new_tokens=24, batch_size=1).write(job_dir)
    proc = run_worker(job_dir, tmp_path / "home", wait=False)
    deadline = time.monotonic() + 240
    while not rows_done(job_dir) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, (job_dir / "worker.log").read_text()
    st = status(job_dir)
    assert st["status"] == "Canceled" and 0 < len(rows_done(job_dir)) < 200 and st["max_steps"] == 200
    assert not (job_dir / "result.json").exists()


def test_a_bad_data_row_or_a_model_that_does_not_load_fails_the_job_readably(eval_models, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    bad = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], '{"messages": [{"role": "user", "content": "hi"}]}'])
    for name, model, data, wanted in [
        ("bad-row", EvaluatedModel("worse", str(eval_models.worse)), bad, "line 2: no assistant message"),
        ("no-model", EvaluatedModel("ghost:3", str(tmp_path / "gone")), write_jsonl(tmp_path / "ok.jsonl", ROWS),
         "model ghost:3:"),
    ]:
        job_dir = tmp_path / name
        job_dir.mkdir()
        EvaluationSpec(job_id=name, name=name, model=model, baseline=None, data=str(data), mlflow_tracking_uri=uri,
                       metrics=("loss",)).write(job_dir)
        assert run_job(job_dir) == 1
        st = status(job_dir)
        assert st["status"] == "Failed" and wanted in st["error"], st["error"]


def resumed(evaluated, tmp_path, data: Path | None = None) -> tuple[Path, subprocess.Popen]:
    """A copy of the evaluated job, resumed (on `data` when given) after its rows.jsonl was edited by the test."""
    job_dir = tmp_path / "job"
    spec = dataclasses.replace(evaluated["spec"], resume=True, **({"data": str(data)} if data else {}))
    spec.write(job_dir)
    return job_dir, run_worker(job_dir, evaluated["home"])


def copied(evaluated, tmp_path) -> list[dict]:
    job_dir = tmp_path / "job"
    shutil.copytree(evaluated["job_dir"], job_dir)
    (job_dir / "result.json").unlink()
    return [dict(d, answer="REMEMBERED") for d in rows_done(job_dir)]


def test_a_row_torn_by_a_kill_is_cut_off_on_resume(evaluated, tmp_path):
    kept = copied(evaluated, tmp_path)
    torn = json.dumps(kept[3])[:25]  # the fourth row half written when the worker was killed
    (tmp_path / "job" / "rows.jsonl").write_text("".join(json.dumps(d) + "\n" for d in kept[:3]) + torn)
    job_dir, proc = resumed(evaluated, tmp_path)
    assert proc.returncode == 0, (job_dir / "worker.log").read_text()
    assert "3 of 8 already done" in (job_dir / "worker.log").read_text()
    assert len(rows_done(job_dir)) == 8  # every line parses: the torn one is gone, none ran into it
    result = json.loads((job_dir / "result.json").read_text())
    assert sum(row[side]["answer"] == "REMEMBERED" for row in result["rows"] for side in ("model", "baseline")) == 3


def test_a_resume_redoes_the_rows_the_data_file_no_longer_holds(evaluated, tmp_path):
    kept = copied(evaluated, tmp_path)
    write_jsonl(tmp_path / "job" / "rows.jsonl", kept)
    changed = [ROWS[0], chat_rows([("What colour is the sky?", "Blue.")])[0], ROWS[2], ROWS[3]]
    job_dir, proc = resumed(evaluated, tmp_path, write_jsonl(tmp_path / "changed.jsonl", changed))
    assert proc.returncode == 0, (job_dir / "worker.log").read_text()
    assert "6 of 8 already done" in (job_dir / "worker.log").read_text()
    rows = json.loads((job_dir / "result.json").read_text())["rows"]
    assert rows[1]["question"] == "What colour is the sky?"
    assert [row["model"]["answer"] == "REMEMBERED" for row in rows] == [True, False, True, True]
    assert [row["baseline"]["answer"] == "REMEMBERED" for row in rows] == [True, False, True, True]


def test_max_new_tokens_past_the_context_fails_the_job_naming_it(eval_models, tmp_path):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    context = json.loads((eval_models.worse / "config.json").read_text())["max_position_embeddings"]
    EvaluationSpec(job_id="ctx", name="ctx", model=EvaluatedModel("worse", str(eval_models.worse)), baseline=None,
                   data=str(write_jsonl(tmp_path / "ok.jsonl", ROWS)), mlflow_tracking_uri=f"sqlite:///{tmp_path}/m.db",
                   metrics=("f1",), max_new_tokens=context).write(job_dir)
    assert run_job(job_dir) == 1
    st = status(job_dir)
    assert st["status"] == "Failed" and f"({context} tokens)" in st["error"] and f"below {context}" in st["error"]


def test_a_version_tag_that_cannot_be_written_leaves_the_job_completed_with_a_warning(eval_models, tmp_path, capsys):
    """The version was deleted meanwhile: the scores stand, the warning is in the log and in result.json. A prompt
    longer than the context is scored on its end, and marked and counted."""
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    long = chat_rows([(" ".join(["word"] * 2000), "Fine.")])
    EvaluationSpec(job_id="tag", name="tag", model=EvaluatedModel("ghost:1", str(eval_models.worse)), baseline=None,
                   data=str(write_jsonl(tmp_path / "ok.jsonl", ROWS[:2] + long)),
                   mlflow_tracking_uri=f"sqlite:///{tmp_path}/m.db", metrics=("loss", "f1"),
                   max_new_tokens=4).write(job_dir)
    assert run_job(job_dir) == 0
    assert status(job_dir)["status"] == "Completed"
    result = json.loads((job_dir / "result.json").read_text())
    assert len(result["warnings"]) == 1 and "ghost:1" in result["warnings"][0]
    assert "warning: the evaluation could not be recorded on ghost:1" in capsys.readouterr().out
    assert result["model"]["metrics"]["truncated_prompts"] == 1
    assert [row["model"].get("prompt_truncated", False) for row in result["rows"]] == [False, False, True]
