"""Evaluation jobs through the job runner with a compute that runs nothing: the job file and row, the program the
compute is asked to start, progress copied from status.json, the result only once Completed, resume with the
evaluation's own job file, and a fine-tune with evaluate_against_base queueing its evaluation against the base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgeflow.errors import Conflict, InvalidInput, NotFound
from forgeflow.store.states import JobStatus
from forgeflow.training.compute.base import Ended
from forgeflow.training.hyperparams import resolve_hyperparameters
from forgeflow.training.jobs import JOB_PROGRAMS, EvaluatedModel, EvaluationSpec
from forgeflow.training.runner import JobRunner


class Handle:
    def __init__(self) -> None:
        self.ended: Ended | None = None

    def poll(self) -> Ended | None:
        return self.ended

    def cancel(self) -> None:
        self.ended = Ended(None)

    def kill(self) -> None:
        self.ended = Ended(None)


class RecordingCompute:
    """Starts nothing; remembers which program each job folder was started with."""

    def __init__(self) -> None:
        self.started: dict[Path, tuple[str, Handle]] = {}

    def check(self, hp) -> None:
        pass

    def start(self, job_dir: Path, env=None, program: str = JOB_PROGRAMS["finetuning"]) -> Handle:
        handle = Handle()
        self.started[Path(job_dir)] = (program, handle)
        return handle

    def attach(self, job_dir: Path) -> Handle | None:
        started = self.started.get(Path(job_dir))
        return started[1] if started and started[1].ended is None else None


@pytest.fixture
def compute():
    return RecordingCompute()


@pytest.fixture
def runner(ws, compute, monkeypatch):
    monkeypatch.setattr(JobRunner, "_prepare_tracking", lambda self: None)
    return JobRunner(ws.store, ws.paths, local=compute)


@pytest.fixture
def ws():
    from forgeflow.store.workspace import Workspace

    return Workspace.open()


def report(job_dir: Path, **status) -> None:
    (job_dir / "status.json").write_text(json.dumps(status))


def evaluation(runner: JobRunner, **kw):
    return runner.submit_evaluation(model=EvaluatedModel("tuned:2", "/models/tuned"),
                                    baseline=EvaluatedModel("base:1", "/models/base"), data="/data/test.jsonl",
                                    metrics=("loss", "f1"), max_rows=4, **kw)


def test_an_evaluation_is_a_job_whose_worker_is_the_evaluation_program(runner, compute):
    job = evaluation(runner, name="tuned-vs-base")
    assert job.id.startswith("ev-") and job.type == "evaluation" and job.status == JobStatus.QUEUED
    assert (job.base_model, job.base_model_path, job.training_data, job.validation_data) == (
        "tuned:2", "/models/tuned", "/data/test.jsonl", "base:1")
    assert job.hyperparameters["metrics"] == ["loss", "f1"] and job.hyperparameters["max_rows"] == 4
    spec = EvaluationSpec.read(job.job_dir)
    assert spec.model == EvaluatedModel("tuned:2", "/models/tuned") and spec.baseline.ref == "base:1"
    assert spec.metrics == ("loss", "f1") and spec.job_id == job.id and spec.name == "tuned-vs-base"
    assert not spec.resume and spec.mlflow_tracking_uri

    with pytest.raises(Conflict, match="is Queued") as queued:
        runner.evaluation_result(job.id)
    assert queued.value.field == "job"
    runner.tick()
    assert compute.started[job.job_dir][0] == "forgeflow.evaluation.worker"
    report(job.job_dir, status="Running", step=2, max_steps=4, eta_s=3.0)
    runner.tick()
    running = runner.get(job.id)
    assert running.status == JobStatus.RUNNING and running.progress["step"] == 2
    with pytest.raises(Conflict, match=r"is Running \(2 of 4 rows scored\)"):
        runner.evaluation_result(job.id)

    result = {"job": job.id, "model": {"ref": "tuned:2", "metrics": {"f1": 0.5}}, "baseline": None, "rows": []}
    (job.job_dir / "result.json").write_text(json.dumps(result))
    report(job.job_dir, status="Completed", step=4, max_steps=4)
    compute.started[job.job_dir][1].ended = Ended(0)
    runner.tick()
    assert runner.get(job.id).status == JobStatus.COMPLETED
    assert runner.evaluation_result(job.id) == result


def test_a_fine_tuning_job_has_no_evaluation_result(runner):
    job = runner.submit(base_model="tiny", base_model_path="/m", training_data="/t.jsonl",
                        hyperparameters=resolve_hyperparameters({}))
    with pytest.raises(NotFound, match="not an evaluation"):
        runner.evaluation_result(job.id)


def test_a_failed_evaluation_resumes_with_its_own_job_file(runner, compute):
    job = evaluation(runner)
    runner.tick()
    (job.job_dir / "rows.jsonl").write_text('{"line": 1}\n{"line": 2}\n')
    report(job.job_dir, status="Running", step=2, max_steps=4)
    compute.started[job.job_dir][1].ended = Ended(1)
    runner.tick()
    failed = runner.get(job.id)
    assert failed.status == JobStatus.FAILED and "continue after the rows it scored" in failed.error

    resumed = runner.resume(job.id)
    assert resumed.status == JobStatus.QUEUED and EvaluationSpec.read(job.job_dir).resume
    assert "after the 2 rows it scored" in (job.job_dir / "worker.log").read_text()
    runner.tick()
    assert compute.started[job.job_dir][0] == "forgeflow.evaluation.worker"
    assert runner.cancel(job.id).status == JobStatus.CANCEL_REQUESTED
    runner.tick()
    runner.tick()
    assert runner.get(job.id).status == JobStatus.CANCELED


def test_evaluate_against_base_needs_validation_data(runner):
    with pytest.raises(InvalidInput, match="validation data") as refused:
        runner.submit(base_model="tiny", base_model_path="/m", training_data="/t.jsonl",
                      hyperparameters=resolve_hyperparameters({"evaluate_against_base": "true"}))
    assert refused.value.field == "evaluate_against_base"


def ending_fine_tune(runner, compute, tmp_path):
    """A fine-tune with evaluate_against_base whose worker has just ended, Completed, with its model written."""
    fine_tune = runner.submit(base_model="tiny", base_model_path=str(tmp_path / "base"), training_data="/t.jsonl",
                              validation_data="/v.jsonl", name="quill",
                              hyperparameters=resolve_hyperparameters({"evaluate_against_base": "true"}))
    runner.tick()
    output = fine_tune.job_dir / "outputs" / "mlflow_model"
    output.mkdir(parents=True)
    (output / "MLmodel").write_text("flavors: {}\n")
    (output / "config.json").write_text("{}")  # the checkpoint itself: the folder the evaluation loads
    report(fine_tune.job_dir, status="Completed", metrics={"train_loss": 0.5})
    compute.started[fine_tune.job_dir][1].ended = Ended(0)
    return fine_tune, output


def test_a_completed_fine_tune_with_evaluate_against_base_queues_its_evaluation_once(runner, compute, tmp_path,
                                                                                     monkeypatch):
    fine_tune, output = ending_fine_tune(runner, compute, tmp_path)
    seen, update = [], runner.store.update

    def update_and_look(*args, **kwargs):  # what a reader of the jobs table could see after each change
        changed = update(*args, **kwargs)
        now = runner.get(fine_tune.id)
        seen.append((now.status, now.evaluation_job))
        return changed

    monkeypatch.setattr(runner.store, "update", update_and_look)
    runner.tick()
    assert [s for s in seen if s[0] == JobStatus.COMPLETED and not s[1]] == []  # never Completed without its link

    done = runner.get(fine_tune.id)
    assert done.status == JobStatus.COMPLETED and done.metrics == {"train_loss": 0.5}  # the link has its column
    queued = runner.get(done.evaluation_job)
    spec = EvaluationSpec.read(queued.job_dir)
    assert spec.mlflow_artifact_location == runner.paths.mlflow_artifacts
    assert spec.model == EvaluatedModel(f"job:{fine_tune.id}", str(output))
    assert spec.baseline == EvaluatedModel("tiny", str(tmp_path / "base"))
    assert spec.data == "/v.jsonl" and spec.source_job == fine_tune.id and queued.name == "quill-vs-base"
    runner.tick()
    assert [j.id for j in runner.list() if j.type == "evaluation"] == [queued.id]  # once


def test_a_completed_write_that_fails_does_not_queue_the_evaluation_twice(runner, compute, tmp_path, monkeypatch):
    fine_tune, _ = ending_fine_tune(runner, compute, tmp_path)
    write, failed = runner._write, []

    def fails_once(job_id, expect=None, **values):
        if values.get("status") == JobStatus.COMPLETED and not failed:
            failed.append(job_id)
            raise RuntimeError("the database went away")
        return write(job_id, expect, **values)

    monkeypatch.setattr(runner, "_write", fails_once)
    with pytest.raises(RuntimeError, match="went away"):
        runner.tick()  # the evaluation was queued; the fine-tune's Completed write failed
    assert not runner.get(fine_tune.id).status.terminal
    runner.tick()
    done = runner.get(fine_tune.id)
    assert done.status == JobStatus.COMPLETED and failed == [fine_tune.id]
    assert [j.id for j in runner.list() if j.type == "evaluation"] == [done.evaluation_job]
