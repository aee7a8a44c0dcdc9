"""Fine-tuning jobs on a ray compute target, on the loopback cluster (head with no CPUs, worker nodes node-1 and
node-2): a job runs on a worker node, two data-parallel workers train one model, cancel stops the job on the cluster,
and resume continues from the checkpoint after the node that ran the job is gone. Plus the pieces that need no
cluster: instance_count at the edge, the local target's refusal, job folders on the target's storage, and the fence
that stops a worker which outlived its node once its job is resumed elsewhere."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path

import pytest

from forgeflow.errors import InvalidInput
from forgeflow.raycluster import node_type_resources, submission_client
from forgeflow.store.states import JobStatus
from forgeflow.training.checkpoints import checkpoint_step, newest_checkpoint
from forgeflow.training.compute.base import Ended
from forgeflow.training.compute.local import LocalCompute
from forgeflow.training.compute.ray import PYTHON_ENV, SUBMISSION_FILE, RayCompute
from forgeflow.training.compute.targets import ComputeTarget
from forgeflow.training.hyperparams import resolve_hyperparameters
from forgeflow.training.jobs import Job
from forgeflow.training.runner import JobRunner
from forgeflow.training.tracking import Attempt, JobFiles, read_metrics

RESUMED = re.compile(r"resuming from checkpoint-\d+ \(step (\d+)\)")
RESUMED = re.compile(r"resuming from checkpoint-\d+ \(step (\d+)\)")
# Few steps of a tiny model on short rows: each job takes seconds once its worker has imported torch.
SETTINGS = {"logging_steps": 1, "per_device_train_batch_size": 2, "max_seq_length": 64, "learning_rate": 1e-2,
            "evaluation_strategy": "no"}


@pytest.fixture
def cluster(loopback_ray, ws, tmp_path, monkeypatch):
    """A runner with a ray target on the loopback cluster; its storage is a folder every node (this host) sees."""
    monkeypatch.setenv(PYTHON_ENV, sys.executable)  # the nodes run this venv, which is not on their PATH
    runner = JobRunner(ws.store, ws.paths, poll_s=0.2)
    runner.targets.create(ComputeTarget(name="cluster", type="ray", address=loopback_ray.address,
                                        storage=str(tmp_path / "shared"), max_concurrent_jobs=2))
    runner.start()
    yield runner
    runner.stop()
    client = submission_client(loopback_ray.address)
    for job in runner.list():  # no test leaves work running on the shared cluster
        if (worker := RayCompute(loopback_ray.address).attach(job.job_dir)) is not None:
            client.stop_job(worker.submission_id)


def submit(runner: JobRunner, data: Path, model: Path, **hp) -> Job:
    return runner.submit(base_model="tiny", base_model_path=str(model), training_data=str(data), compute="cluster",
                         hyperparameters=resolve_hyperparameters(SETTINGS | hp))


def wait_for(runner: JobRunner, job_id: str, pred, what: str, timeout: float = 150) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = runner.get(job_id)
        if pred(job):
            return job
        time.sleep(0.2)
    pytest.fail(f"{job_id}: {what} did not happen: {runner.get(job_id)}\n{runner.log_text(job_id)[0][-3000:]}")


def ray_job(loopback_ray, job: Job):
    submission = json.loads((job.job_dir / SUBMISSION_FILE).read_text())["submission_id"]
    return submission_client(loopback_ray.address).get_job_info(submission)


def node_name(loopback_ray, node_id: str) -> str | None:
    return next((name for name, node in loopback_ray.workers.items() if node.node_id == node_id), None)


def losses(job: Job) -> list[float]:
    return [row["train_loss"] for row in read_metrics(job.job_dir) if "train_loss" in row]


@pytest.mark.ray
def test_jobs_run_on_worker_nodes_one_worker_and_two_data_parallel(cluster, loopback_ray, data, tiny_model_dir,
                                                                    tmp_path):
    """Both at once (the target runs two jobs): one worker, and two Ray Train workers through Azure's
    num_nodes_finetune. Each completes on worker nodes with its status, metrics and log in the job record; the
    data-parallel one saves one model, its loss goes down as the single worker's does and its token counts are
    those of both workers."""
    single = submit(cluster, data, tiny_model_dir, max_steps=4)
    pair = submit(cluster, data, tiny_model_dir, max_steps=4, num_nodes_finetune=2)
    assert pair.hyperparameters["instance_count"] == 2
    # What a job may ask for is what the nodes it can land on offer: none carry a node type here.
    assert node_type_resources(loopback_ray.address, None).get("CPU", 0) >= 4
    assert node_type_resources(loopback_ray.address, "gpu-a100") == {}
    for job in (single, pair):
        done = wait_for(cluster, job.id, lambda j: j.status.terminal, "the job's end", timeout=240)
        assert done.status == JobStatus.COMPLETED, (done.error, cluster.log_text(job.id)[0][-3000:])
        assert done.job_dir.parent == tmp_path / "shared" / "jobs"  # on the target's storage
        info = ray_job(loopback_ray, done)
        assert info.status == "SUCCEEDED" and node_name(loopback_ray, info.driver_node_id) is not None, info
        assert done.progress["step"] == 4 and done.metrics["train_loss"] > 0 and done.mlflow_run_id
        assert (done.job_dir / "outputs" / "mlflow_model" / "MLmodel").is_file()
        assert len(losses(done)) == 4
        log = cluster.log_text(job.id)[0]
        assert "step 4/4" in log and "job completed" in log, log[-3000:]

    single, pair = cluster.get(single.id), cluster.get(pair.id)
    assert "data-parallel training: 2 workers, gloo on CPUs" in cluster.log_text(pair.id)[0]
    assert losses(pair)[-1] < losses(pair)[0], losses(pair)
    # All rows are alike and both jobs start from the same seed: two workers whose gradients are averaged (not
    # summed, not left apart) follow the single worker's curve step for step, and log the mean of their losses.
    assert losses(pair) == pytest.approx(losses(single), rel=1e-3)
    # Every step trains a batch per worker: the job's token counts are twice a single worker's on the same rows.
    assert pair.metrics["trained_tokens"] == 2 * single.metrics["trained_tokens"] > 0
    assert pair.metrics["loss_tokens"] == 2 * single.metrics["loss_tokens"] > 0
    assert sorted(p.name for p in (pair.job_dir / "outputs").iterdir()) == ["adapter", "mlflow_model"]
    print(f"\ntokens/s, tiny model: 1 worker {single.metrics['train_tokens_per_second']}, "
          f"2 workers {pair.metrics['train_tokens_per_second']}")


@pytest.mark.ray
def test_resume_after_the_node_is_gone_then_cancel(cluster, loopback_ray, data, tiny_model_dir):
    """A job loses the node it runs on: it fails, resumable. Resumed, it continues on another node from its newest
    checkpoint, on the shared storage. Canceled, it stops on the cluster at a step boundary: Ray STOPPED, job
    Canceled."""
    job = submit(cluster, data, tiny_model_dir, max_steps=100000, save_steps=2, learning_rate=1e-3)
    wait_for(cluster, job.id, lambda j: newest_checkpoint(j.job_dir / "checkpoints") is not None, "a checkpoint")
    name = node_name(loopback_ray, ray_job(loopback_ray, job).driver_node_id)
    assert name is not None
    loopback_ray.remove_worker(name)
    try:
        failed = wait_for(cluster, job.id, lambda j: j.status.terminal, "the failure")
    finally:
        loopback_ray.add_worker(name)  # a fresh node of the same name: later tests have two workers again
    assert failed.status == JobStatus.FAILED and f"forgeflow job resume {job.id}" in failed.error, failed
    step = checkpoint_step(newest_checkpoint(job.job_dir / "checkpoints"))

    cluster.resume(job.id)
    wait_for(cluster, job.id, lambda j: RESUMED.search(cluster.log_text(j.id)[0]), "the resumed start")
    # On loopback the worker of a removed node lives on for a moment, and may save a checkpoint or two more before
    # the resumed start supersedes it (on a real cluster its machine is gone); it writes nothing after that.
    start = int(RESUMED.search(cluster.log_text(job.id)[0]).group(1))
    assert start >= step
    step = start
    logged = lambda: [row["step"] for row in read_metrics(job.job_dir) if "train_loss" in row]  # noqa: E731
    resumed = wait_for(cluster, job.id, lambda j: logged()[-1] > step + 1, "training past the checkpoint")
    assert logged()[: step + 2] == list(range(1, step + 3))  # the curve goes on from the checkpoint's step
    assert resumed.status == JobStatus.RUNNING and resumed.mlflow_run_id == failed.mlflow_run_id

    cluster.cancel(job.id)
    canceled = wait_for(cluster, job.id, lambda j: j.status.terminal, "the cancel", timeout=60)
    assert canceled.status == JobStatus.CANCELED and canceled.error is None, canceled
    assert ray_job(loopback_ray, canceled).status == "STOPPED"
    log = cluster.log_text(job.id)[0]
    assert "SIGTERM: stopping at the next step" in log and "job canceled" in log, log[-3000:]


def test_instance_count_at_the_edge():
    assert resolve_hyperparameters({}).scaling.instance_count == 1
    assert resolve_hyperparameters({"instance_count": "3"}).to_dict()["instance_count"] == 3
    assert resolve_hyperparameters({"num_nodes_finetune": "2"}).scaling.instance_count == 2  # Azure's name
    for bad, message in (("0", "instance_count must be a positive integer up to 1024"),
                         ("two", "instance_count must be an integer")):
        with pytest.raises(InvalidInput, match=message) as exc:
            resolve_hyperparameters({"instance_count": bad})
        assert exc.value.field == "instance_count"
    with pytest.raises(InvalidInput, match="num_nodes_finetune is Azure's name for instance_count") as both:
        resolve_hyperparameters({"instance_count": 2, "num_nodes_finetune": 2})
    assert both.value.field == "num_nodes_finetune"


def test_the_local_target_refuses_data_parallel_jobs(ws, data, tiny_model_dir, tmp_path):
    runner = JobRunner(ws.store, ws.paths)
    with pytest.raises(InvalidInput, match="instance_count=2 .* needs a ray compute target") as exc:
        runner.submit(base_model="tiny", base_model_path=str(tiny_model_dir), training_data=str(data),
                      hyperparameters=resolve_hyperparameters({"instance_count": 2}))
    assert exc.value.field == "instance_count" and runner.list() == []
    # A ray target takes it, and queues the job in a folder on its storage (nothing reaches the cluster yet).
    runner.targets.create(ComputeTarget(name="far", type="ray", address="head:6379", storage=str(tmp_path / "nfs")))
    job = runner.submit(base_model="tiny", base_model_path=str(tiny_model_dir), training_data=str(data),
                        hyperparameters=resolve_hyperparameters({"instance_count": 2}), compute="far")
    assert job.status == JobStatus.QUEUED and job.job_dir == tmp_path / "nfs" / "jobs" / job.id
    assert (job.job_dir / "spec.json").is_file() and RayCompute("head:6379").attach(job.job_dir) is None


def test_a_worker_superseded_by_a_newer_start_stops_and_writes_nothing(ws, data, tiny_model_dir):
    """What stops the worker of a node that was cut off once its job is resumed elsewhere: a newer start's id in
    JOB_DIR/attempt.json. The old worker stops at its next step and leaves the new start's record alone."""
    runner = JobRunner(ws.store, ws.paths)
    job = runner.submit(base_model="tiny", base_model_path=str(tiny_model_dir), training_data=str(data),
                        hyperparameters=resolve_hyperparameters(SETTINGS | {"max_steps": 100000}))
    worker = LocalCompute().start(job.job_dir)
    try:
        deadline = time.monotonic() + 120
        while len(read_metrics(job.job_dir)) < 2 and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(read_metrics(job.job_dir)) >= 2, (job.job_dir / "worker.log").read_text()[-3000:]
        newer = Attempt.begin(JobFiles(job.job_dir), threading.Event())
        newer.files.write_status(JobStatus.RUNNING, step=0)  # the newer start's record
        record = (job.job_dir / "status.json").read_text()
        rows = read_metrics(job.job_dir)
        while worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert worker.poll() == Ended(0)
    finally:
        worker.kill()
    assert "a newer start of this job took over" in (job.job_dir / "worker.log").read_text()
    assert (job.job_dir / "status.json").read_text() == record and read_metrics(job.job_dir) == rows
    assert not newer.is_set() and newer.files.record
    newer.cancel_everywhere()  # what the driver of a data-parallel start tells its workers on SIGTERM
    assert Attempt(JobFiles(job.job_dir), newer.id).is_set()
