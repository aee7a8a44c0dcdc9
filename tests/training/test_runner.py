"""The job runner with real worker processes on the tiny model: per-target queueing, resume bookkeeping,
adoption of a worker started by an earlier runner (a server restart)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forgeflow.errors import Conflict, InvalidInput, NotFound
from forgeflow.store.states import JobStatus
from forgeflow.training.checkpoints import newest_checkpoint
from forgeflow.training.compute.local import LocalCompute
from forgeflow.training.compute.targets import ComputeTarget, ComputeTargets, validate_target
from forgeflow.training.hyperparams import resolve_hyperparameters
from forgeflow.training.jobs import Job
from forgeflow.training.runner import JobRunner

pytestmark = pytest.mark.integration



def submit(runner: JobRunner, model: Path, data: Path, compute: str = "local", **hp) -> Job:
    settings = {"max_steps": 2, "logging_steps": 1, "per_device_train_batch_size": 2} | hp
    return runner.submit(base_model="tiny", base_model_path=str(model), training_data=str(data),
                         hyperparameters=resolve_hyperparameters(settings), compute=compute)


def watch(runner: JobRunner, ids: list[str], timeout: float = 240) -> tuple[list[Job], int]:
    """Poll until every job is final; returns the final records and the most jobs seen active at once."""
    most = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [runner.get(i) for i in ids]
        most = max(most, sum(job.active for job in jobs))
        if all(job.status.terminal for job in jobs):
            return jobs, most
        time.sleep(0.2)
    pytest.fail(f"jobs did not finish: {[(job.id, job.status) for job in jobs]}")


def test_compute_targets_local_default_and_validation(ws):
    targets = ComputeTargets(ws.store)
    local = targets.get("local")
    assert local["type"] == "local" and local["max_concurrent_jobs"] == 1
    assert targets.get("azureml:local")["name"] == "local"
    created = targets.create(ComputeTarget(name="pair", max_concurrent_jobs=2))
    assert created["max_concurrent_jobs"] == 2 and created["min_nodes"] == 0 and created["max_nodes"] == 1
    with pytest.raises(InvalidInput, match="needs --address") as no_address:
        validate_target({"name": "cluster", "type": "ray"})
    assert no_address.value.field == "address"
    for bad in ("head", "head:0", "head:99999", "ftp://head:1", "ray://", "a b:1"):
        with pytest.raises(InvalidInput, match="not a Ray address"):
            validate_target({"name": "cluster", "type": "ray", "address": bad})
    for good in ("auto", "head:6379", "10.0.0.5:6379", "ray://head:10001", "http://head:8265/"):
        assert validate_target({"name": "c", "type": "ray", "address": good}).address == good.rstrip("/")
    with pytest.raises(InvalidInput, match="for ray targets only") as local_address:
        validate_target({"name": "pair2", "address": "head:6379"})
    assert local_address.value.field is None or "address" in local_address.value.message
    with pytest.raises(InvalidInput, match="absolute directory"):
        validate_target({"name": "c", "type": "ray", "address": "auto", "storage": "s3://bucket/jobs"})
    with pytest.raises(Conflict, match="already exists"):
        targets.create(ComputeTarget(name="pair"))
    with pytest.raises(NotFound, match="targets: local, pair"):
        targets.get("nope")
    assert targets.update("local", {"max_concurrent_jobs": 3})["max_concurrent_jobs"] == 3
    with pytest.raises(InvalidInput, match="max_concurrent_jobs"):
        targets.update("local", {"max_concurrent_jobs": 0})
    assert ComputeTargets(ws.store).limits() == {"local": 3, "pair": 2}


def wait_for(runner: JobRunner, job_id: str, pred, what: str, timeout: float = 180) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = runner.get(job_id)
        if pred(job):
            return job
        assert not job.status.terminal, f"{job_id} ended {job.status} waiting for {what}: {job.error}"
        time.sleep(0.2)
    pytest.fail(f"{job_id}: {what} did not happen: {runner.get(job_id)}")


def test_jobs_queue_per_compute_target(ws, tiny_model_dir, data):
    """max_concurrent_jobs=1: the second job waits while the first runs; raised to 2: both run together.
    Both are then canceled and end Canceled."""
    runner = JobRunner(ws.store, ws.paths, poll_s=0.2)
    runner.targets.create(ComputeTarget(name="box", max_concurrent_jobs=1))
    first = submit(runner, tiny_model_dir, data, compute="box", max_steps=100000)
    second = submit(runner, tiny_model_dir, data, compute="box", max_steps=100000)
    other = submit(runner, tiny_model_dir, data, compute="local", max_steps=100000)  # still running when looked at
    runner.start()
    try:
        running = lambda j: j.status == JobStatus.RUNNING and (j.progress or {}).get("step", 0) > 0
        wait_for(runner, first.id, running, "first job training")
        assert runner.get(second.id).status == JobStatus.QUEUED  # box is full ...
        wait_for(runner, other.id, lambda j: j.active, "local job start")  # ... local is another queue
        runner.cancel(other.id)
        assert watch(runner, [other.id], timeout=60)[0][0].status == JobStatus.CANCELED
        assert runner.get(second.id).status == JobStatus.QUEUED
        assert runner.load("box") == {"running_jobs": 1, "queued_jobs": 1}

        runner.targets.update("box", {"max_concurrent_jobs": 2})
        runner.wake()
        wait_for(runner, second.id, running, "second job training")
        assert runner.get(first.id).status == JobStatus.RUNNING  # both at once

        for job in (first, second):
            runner.cancel(job.id)
        jobs, _ = watch(runner, [first.id, second.id], timeout=60)
    finally:
        runner.stop()
        for job in runner.list():  # never leave an endless worker behind a failed test
            if (worker := LocalCompute().attach(job.job_dir)) is not None:
                worker.kill()
    assert [job.status for job in jobs] == [JobStatus.CANCELED, JobStatus.CANCELED]
    assert all(job.error is None and job.finished_at for job in jobs)


def test_resume_rules_and_bookkeeping(ws, tiny_model_dir, data):
    runner = JobRunner(ws.store, ws.paths)
    job = submit(runner, tiny_model_dir, data)
    with pytest.raises(Conflict, match="already Queued"):
        runner.resume(job.id)
    job_dir = job.job_dir
    for step in (2, 10):
        folder = job_dir / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (job_dir / "checkpoints" / "checkpoint-12").mkdir()  # a worker killed while writing it
    (job_dir / "worker.log").write_text("step 1\nKilled\n")
    (job_dir / "status.json").write_text(json.dumps({"status": "Failed", "error": "boom", "mlflow_run_id": "r1"}))
    ws.store.update("jobs", {"id": job.id}, {"status": "Failed", "error": "boom", "finished_at": "x"})
    assert newest_checkpoint(job_dir / "checkpoints").name == "checkpoint-10"

    resumed = runner.resume(job.id)

    assert resumed.status == JobStatus.QUEUED and resumed.error is None and resumed.finished_at is None
    assert json.loads((job_dir / "spec.json").read_text())["resume"] is True
    status = json.loads((job_dir / "status.json").read_text())
    assert status["status"] == "Queued" and status["error"] is None and status["mlflow_run_id"] == "r1"
    log = (job_dir / "worker.log").read_text()
    assert log.startswith("step 1\nKilled\n") and "resumed from checkpoint-10 after Failed" in log

    ws.store.update("jobs", {"id": job.id}, {"status": "Completed"})
    with pytest.raises(Conflict, match="Completed"):
        runner.resume(job.id)
    # an active job whose worker is gone (died unseen) may be resumed; one with a live worker may not
    ws.store.update("jobs", {"id": job.id}, {"status": "Running"})
    (job_dir / "worker.pid").write_text("999999\n")
    assert runner.resume(job.id).status == JobStatus.QUEUED
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(job_dir)])
    try:
        ws.store.update("jobs", {"id": job.id}, {"status": "Running"})
        (job_dir / "worker.pid").write_text(f"{alive.pid}\n")
        with pytest.raises(Conflict, match="still running"):
            runner.resume(job.id)
    finally:
        alive.kill()
        alive.wait()


def _running_job(ws, job_id: str) -> Path:
    job_dir = ws.paths.jobs / job_id
    job_dir.mkdir(parents=True)
    ws.store.insert("jobs", {"id": job_id, "name": job_id, "type": "finetuning", "status": "Running",
                             "compute": "local", "base_model": "m", "base_model_path": "/m", "training_data": "/d",
                             "hyperparameters": {}, "job_dir": str(job_dir), "created_at": "2026-01-01T00:00:00+00:00"})
    return job_dir


def test_a_cancel_through_another_server_never_turns_a_job_that_ended_meanwhile_into_canceled(ws):
    """Two servers on one store: a follower reads the job Running, the leader's loop then sees it Completed; the
    follower's cancel must not overwrite that (409, the job stays Completed)."""
    leader = JobRunner(ws.store, ws.paths)
    job_dir = _running_job(ws, "ft-raced")

    class Follower(JobRunner):
        def get(self, job_id: str) -> Job:
            job = super().get(job_id)  # read Running; the worker finishes and the leader records it
            if job.status == JobStatus.RUNNING:
                (job_dir / "status.json").write_text(json.dumps({"status": "Completed", "metrics": {"loss": 1.0}}))
                leader.tick()
            return job

    with pytest.raises(Conflict, match="ended meanwhile: it is Completed"):
        Follower(ws.store, ws.paths).cancel("ft-raced")
    leader.tick()
    assert leader.get("ft-raced").status == JobStatus.COMPLETED

    _running_job(ws, "ft-running")  # still running: the cancel is asked of the leader's loop
    assert JobRunner(ws.store, ws.paths).cancel("ft-running").status == JobStatus.CANCEL_REQUESTED


def test_a_worker_on_another_host_is_followed_by_its_status_not_judged_by_a_pid_here(ws):
    """A new leader on another machine (job folders on shared storage) cannot see the worker's pid: it keeps the job
    running while the worker writes its status, and fails it only once the status has gone stale for long."""
    import os

    from forgeflow.training.compute.local import FOREIGN_STALE_S

    job_dir = _running_job(ws, "ft-elsewhere")
    (job_dir / "worker.pid").write_text("4242 another-host.example\n")  # no such pid here: it runs over there
    (job_dir / "status.json").write_text(json.dumps({"status": "Running", "step": 3, "max_steps": 10}))
    runner = JobRunner(ws.store, ws.paths)
    runner._recover()  # what a new leader does first
    runner.tick()
    job = runner.get("ft-elsewhere")
    assert job.status == JobStatus.RUNNING and job.progress["step"] == 3
    with pytest.raises(Conflict, match="still running"):
        runner.resume("ft-elsewhere")

    long_ago = time.time() - FOREIGN_STALE_S - 5
    for name in ("status.json", "worker.pid"):
        os.utime(job_dir / name, (long_ago, long_ago))
    runner.tick()
    job = runner.get("ft-elsewhere")
    assert job.status == JobStatus.FAILED
    assert "pid 4242 on host another-host.example" in job.error and "wrote no status for 120 s" in job.error

    # the worker finished over there: its own status ends the job
    job_dir = _running_job(ws, "ft-done-elsewhere")
    (job_dir / "worker.pid").write_text("4242 another-host.example\n")
    (job_dir / "status.json").write_text(json.dumps({"status": "Completed", "metrics": {"loss": 0.5}}))
    runner.tick()
    assert runner.get("ft-done-elsewhere").status == JobStatus.COMPLETED
