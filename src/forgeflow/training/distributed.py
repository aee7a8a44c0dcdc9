"""Data-parallel fine-tuning on a Ray cluster: `python -m forgeflow.training.distributed JOB_DIR`, the entrypoint
of a Ray job whose `instance_count` is above 1 (compute/ray.py submits it).

This process is the job's driver. It keeps the job's record as a single worker does (`worker.run_job`: status,
MLflow run, how the job ended) and trains with `instance_count` Ray Train workers (TorchTrainer), which share a
torch.distributed group: gloo on CPUs, NCCL when the cluster has GPUs. Each worker runs `worker.train`;
transformers' Trainer finds the group and wraps the model in DDP, so every step trains instance_count batches,
gradients are averaged and the loss it logs is the workers' mean. Rank 0 alone writes status.json, metrics.jsonl,
the MLflow metrics, the checkpoints and the model; the other workers print nothing (their errors reach this driver
through Ray Train). Supervised fine-tuning only: `jobfile.check_method` refuses a dpo job with instance_count > 1
at every edge, and the driver again before any worker starts.

Cancel: Ray's stop_job sends this driver SIGTERM; the driver writes JOB_DIR/cancel.requested on the shared storage,
and the workers, which ask their `Attempt` at every step, stop together at the next step boundary. Workers that
outlive their driver (its node died and Ray has not noticed yet) stop once the job is resumed (`Attempt`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

from forgeflow.errors import ForgeflowError, InvalidInput, UpstreamError
from forgeflow.raycluster import NODE_TYPE_LABEL
from forgeflow.store.states import JobStatus
from forgeflow.training.jobfile import check_method
from forgeflow.training.jobs import JobSpec
from forgeflow.training.tracking import Attempt, JobFiles, MlflowRun, read_status
from forgeflow.training.worker import one_line_error, quiet_environment, run_job, stop_on_sigterm, train

# Ray Train sends the workers' prints through its logger by default; printed as they are, rank 0's lines reach the
# job's log once and the other ranks' can be silenced.
TRAIN_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
# The cluster's GCS address, when the compute knows it: the driver connects there rather than where Ray's job
# supervisor points it (the newest cluster started on the node).
CLUSTER_ENV = "FORGEFLOW_RAY_ADDRESS"
# The node type (the compute target's size) the workers must run on, when the target names one.
NODE_TYPE_ENV = "FORGEFLOW_RAY_NODE_TYPE"
# Ray Train's own run folder (its bookkeeping; forgeflow's checkpoints stay in JOB_DIR/checkpoints).
RAY_TRAIN_DIR = "ray_train"


def train_on_ray(
    spec: JobSpec, files: JobFiles, run: MlflowRun | None, attempt: Attempt
) -> tuple[JobStatus, dict[str, float]]:
    """`worker.train` in `instance_count` Ray Train workers; returns what rank 0 recorded at the end."""
    check_method(spec.hyperparameters)
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    job_dir = files.job_dir
    threading.Thread(target=_forward_cancel, args=(attempt,), daemon=True).start()
    ray.init(address=os.environ.get(CLUSTER_ENV) or None)  # else RAY_ADDRESS, set by Ray for this job
    stop_on_sigterm(attempt.event)  # ray.init put its own handler in place, which exits at once
    workers = spec.hyperparameters.scaling.instance_count
    node_type = os.environ.get(NODE_TYPE_ENV) or None
    gpus = gpus_on(ray.nodes(), node_type)
    use_gpu = gpus > 0
    if 0 < gpus < workers:  # Ray Train would wait for the missing GPUs for ever
        raise InvalidInput(f"instance_count={workers} trains on {workers} GPUs and the cluster has {gpus}: "
                           f"use instance_count={gpus} or add GPU nodes", field="instance_count")
    print(f"data-parallel training: {workers} workers, {'NCCL on GPUs' if use_gpu else 'gloo on CPUs'}", flush=True)
    shutil.rmtree(job_dir / RAY_TRAIN_DIR, ignore_errors=True)  # no state of an earlier attempt is restored
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"job_dir": str(job_dir), "run_id": run.run_id if run else None, "attempt": attempt.id},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, label_selector=(
            {NODE_TYPE_LABEL: node_type} if node_type else None)),
        run_config=RunConfig(name=spec.job_id or "job", storage_path=str(job_dir / RAY_TRAIN_DIR)),
    )
    try:
        trainer.fit()
    except ray.train.WorkerGroupError as exc:
        rank, error = min(exc.worker_failures.items(), key=lambda item: item[0])
        raise UpstreamError(f"training worker {rank} failed: {one_line_error(_cause(error))}") from None
    return recorded_end(files, attempt)


def recorded_end(files: JobFiles, attempt: Attempt) -> tuple[JobStatus, dict[str, float]]:
    """How rank 0 recorded the end of this start. Once a newer start owns the folder, status.json is that start's
    record (Running): nothing here to report, and run_job, seeing the start superseded, writes nothing."""
    if attempt.superseded:
        return JobStatus.CANCELED, {}
    ended = read_status(files.job_dir) or {}
    if ended.get("status") not in (JobStatus.COMPLETED, JobStatus.CANCELED):
        raise ForgeflowError("the training workers ended without recording how (see the job's log)")
    files.state.update(ended)  # rank 0's record, which the driver's last write keeps
    return JobStatus(ended["status"]), ended.get("metrics") or {}


def gpus_on(nodes: list[dict[str, Any]], node_type: str | None) -> int:
    """GPUs of the live nodes the workers may run on (`ray.nodes()` rows): those of the target's node type when it
    names one, since a GPU on another type would leave the workers waiting for it for ever."""
    return int(sum(node.get("Resources", {}).get("GPU", 0) for node in nodes if node.get("Alive") and (
        node_type is None or (node.get("Labels") or {}).get(NODE_TYPE_LABEL) == node_type)))


def _forward_cancel(attempt: Attempt) -> None:
    attempt.event.wait()
    attempt.cancel_everywhere()


def _cause(error: BaseException) -> BaseException:
    """The exception a worker raised, under the wrappers Ray puts around it."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: `worker.train`, rank 0 keeping the job's record."""
    import ray.train

    quiet_environment()
    job_dir = Path(config["job_dir"])
    rank = ray.train.get_context().get_world_rank()
    spec = JobSpec.read(job_dir)
    files = JobFiles(job_dir, record=rank == 0)
    attempt = Attempt(files, config["attempt"])
    if rank == 0:
        files.state.update(read_status(job_dir) or {})  # what the driver recorded: its MLflow run id, ...
        run = MlflowRun.reopen(spec, config["run_id"]) if config["run_id"] else None
        status, metrics = train(spec, files, run, attempt)
        files.write_status(status, metrics=metrics)  # the driver reports this end (nothing once superseded)
        return
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        train(spec, files, None, attempt)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m forgeflow.training.distributed JOB_DIR", file=sys.stderr)
        return 2
    return run_job(Path(args[0]), train_on_ray)


if __name__ == "__main__":
    sys.exit(main())
