"""The job runner through the compute seam, with a compute that runs nothing: queueing per target, status copied
from status.json, cancel then kill after the grace, attaching after a restart, and refusals at submit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgeflow.errors import InvalidInput
from forgeflow.store.states import JobStatus
from forgeflow.training import runner as runner_module
from forgeflow.training.compute.base import Ended
from forgeflow.training.hyperparams import Hyperparameters, resolve_hyperparameters
from forgeflow.training.jobs import JobSpec
from forgeflow.training.runner import JobRunner


class FakeWorker:
    def __init__(self) -> None:
        self.ended: Ended | None = None
        self.calls: list[str] = []

    def poll(self) -> Ended | None:
        return self.ended

    def cancel(self) -> None:
        self.calls.append("cancel")

    def kill(self) -> None:
        self.calls.append("kill")


class FakeCompute:
    """Starts nothing; remembers the handles it gave out and which job folders still 'run' after a restart."""

    def __init__(self) -> None:
        self.started: dict[Path, FakeWorker] = {}
        self.running: dict[Path, FakeWorker] = {}
        self.programs: dict[Path, str] = {}

    def check(self, hp: Hyperparameters) -> None:
        if hp.memory.precision == "fp16":
            raise InvalidInput("precision=fp16 is not here", field="precision")

    def start(self, job_dir: Path, env: dict[str, str] | None = None, program: str = "") -> FakeWorker:
        worker = self.started[job_dir] = self.running[job_dir] = FakeWorker()
        self.programs[job_dir] = program
        return worker

    def attach(self, job_dir: Path) -> FakeWorker | None:
        return self.running.get(job_dir)


@pytest.fixture
def ws(database_url):
    """These tests run on SQLite and on Postgres (tests/conftest.py's database_url)."""
    from forgeflow.store.workspace import Workspace

    return Workspace.open()


@pytest.fixture
def compute():
    return FakeCompute()


@pytest.fixture
def runner(ws, compute, monkeypatch):
    monkeypatch.setattr(JobRunner, "_prepare_tracking", lambda self: None)
    return JobRunner(ws.store, ws.paths, local=compute)


def submit(runner: JobRunner, **settings):
    return runner.submit(base_model="tiny", base_model_path="/m", training_data="/t.jsonl",
                         hyperparameters=resolve_hyperparameters(settings))


def report(job_dir: Path, **status) -> None:
    (job_dir / "status.json").write_text(json.dumps(status))


def test_the_runner_follows_a_job_through_its_handle(runner, compute):
    job = submit(runner, lora_r="4")
    spec = JobSpec.read(job.job_dir)
    assert spec.hyperparameters.lora.lora_r == 4 and spec.compute == "local" and not spec.resume
    assert job.hyperparameters["lora_r"] == 4 and job.status == JobStatus.QUEUED

    runner.tick()
    assert runner.get(job.id).status == JobStatus.STARTING and job.job_dir in compute.started
    report(job.job_dir, status="Running", step=3, max_steps=10, mlflow_run_id="r1")
    runner.tick()
    running = runner.get(job.id)
    assert running.status == JobStatus.RUNNING and running.progress["step"] == 3 and running.mlflow_run_id == "r1"

    report(job.job_dir, status="Completed", step=10, max_steps=10, metrics={"train_loss": 0.5})
    compute.started[job.job_dir].ended = Ended(0)
    runner.tick()
    done = runner.get(job.id)
    assert done.status == JobStatus.COMPLETED and done.metrics == {"train_loss": 0.5} and done.error is None


def test_one_job_at_a_time_per_target_by_default(runner, compute):
    first, second = submit(runner), submit(runner)
    runner.tick()
    assert [runner.get(j.id).status for j in (first, second)] == [JobStatus.STARTING, JobStatus.QUEUED]
    assert runner.load("local") == {"running_jobs": 1, "queued_jobs": 1}
    compute.started[first.job_dir].ended = Ended(1)
    (first.job_dir / "worker.log").write_text("Traceback ...\nRuntimeError: out of memory\n")
    runner.tick()
    failed = runner.get(first.id)
    assert failed.status == JobStatus.FAILED
    assert failed.error.startswith("the worker exited with code 1: ") and "out of memory" in failed.error
    runner.tick()
    assert runner.get(second.id).status == JobStatus.STARTING


def test_cancel_asks_then_kills_after_the_grace(runner, compute, monkeypatch):
    job = submit(runner)
    runner.tick()
    assert runner.cancel(job.id).status == JobStatus.CANCEL_REQUESTED
    runner.tick()
    worker = compute.started[job.job_dir]
    assert worker.calls == ["cancel"]
    monkeypatch.setattr(runner_module, "CANCEL_GRACE_S", -1.0)
    runner.tick()
    assert worker.calls == ["cancel", "kill"]
    worker.ended = Ended(None)
    runner.tick()
    canceled = runner.get(job.id)
    assert canceled.status == JobStatus.CANCELED and canceled.error is None and canceled.finished_at


def test_a_restarted_runner_attaches_or_fails_what_ended_unseen(ws, runner, compute, monkeypatch):
    alive, gone = submit(runner), submit(runner, max_steps="5")
    runner.targets.update("local", {"max_concurrent_jobs": 2})
    runner.tick()
    del compute.running[gone.job_dir]  # its worker died while no server watched

    later = JobRunner(ws.store, ws.paths, local=compute)
    later._recover()
    assert later.get(alive.id).status == JobStatus.STARTING
    lost = later.get(gone.id)
    assert lost.status == JobStatus.FAILED and f"forgeflow job resume {gone.id}" in lost.error

    resumed = later.resume(gone.id)
    assert resumed.status == JobStatus.QUEUED and JobSpec.read(gone.job_dir).resume
    assert "resumed from the start (no checkpoint yet) after Failed" in (gone.job_dir / "worker.log").read_text()


def test_the_compute_refuses_what_it_cannot_run(runner):
    with pytest.raises(InvalidInput, match="fp16 is not here"):
        submit(runner, precision="fp16")
    assert runner.list() == []
