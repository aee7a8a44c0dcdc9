"""The compute seam: "run this job" somewhere, without the job runner knowing where.

A compute starts the worker program of one job folder (`python -m PROGRAM JOB_DIR`: the job type's program,
jobs.JOB_PROGRAMS, e.g. `forgeflow.training.worker`, which reads JOB_DIR/spec.json, or `forgeflow.evaluation.worker`,
which reads JOB_DIR/evaluation.json; both write JOB_DIR/status.json) and hands back a `WorkerHandle`. A handle outlives
no server: after a restart the runner asks the compute to `attach` to the job's worker again. The worker's
output always lands in `worker_log(JOB_DIR)`, so logs read the same whatever ran the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from forgeflow.training.hyperparams import Hyperparameters
from forgeflow.training.jobs import JOB_PROGRAMS

# A worker asked to cancel stops at the next step boundary (saving nothing half-written); a step of a small
# model on CPU takes a second or two, so past this grace the worker is stuck and is killed.
CANCEL_GRACE_S = 15.0
TRAINING_PROGRAM = JOB_PROGRAMS["finetuning"]


@dataclass(frozen=True)
class Ended:
    """How a worker ended: its exit status, or None when the compute could not learn it (it ended unseen); `reason`
    says why the compute judged it ended when it could not see it end."""

    exit_status: int | None
    reason: str | None = None


class WorkerHandle(Protocol):
    """The worker of one job, running on some compute."""

    def poll(self) -> Ended | None:
        """None while the worker runs; how it ended once it has."""

    def cancel(self) -> None:
        """Ask the worker to stop at its next step boundary (it then ends Canceled, its checkpoints kept)."""

    def kill(self) -> None:
        """Stop the worker now (it did not heed `cancel` within CANCEL_GRACE_S)."""


class Compute(Protocol):
    """Runs training workers: processes on this machine, or jobs on a cluster."""

    def check(self, hp: Hyperparameters) -> None:
        """Refuse settings this compute cannot run, when the job is submitted (InvalidInput naming the field)."""

    def start(self, job_dir: Path, env: dict[str, str] | None = None,
              program: str = TRAINING_PROGRAM) -> WorkerHandle:
        """Start `program` (a module name) on the job in `job_dir`, with `env` added to its environment (credentials
        that must not be written into the job folder, such as the MLflow database's password)."""

    def attach(self, job_dir: Path) -> WorkerHandle | None:
        """The worker of `job_dir` if it still runs (started by an earlier server), else None."""


def worker_log(job_dir: Path) -> Path:
    """Where a job's worker output goes, on every compute."""
    return Path(job_dir) / "worker.log"
