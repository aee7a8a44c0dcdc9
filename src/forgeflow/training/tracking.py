"""What a training job records: JOB_DIR/status.json, JOB_DIR/metrics.jsonl and an MLflow run, and which start of
the job (`Attempt`) may record it.

status.json is rewritten atomically (tmp file + os.replace) so the job runner never reads half a file. A start's
writes and a newer start's claim exclude each other (a file lock in the job folder), so a worker whose start was
superseded between two of its steps writes nothing after the newer start claimed the record.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from forgeflow.store.config import worker_uri
from forgeflow.store.states import JobStatus
from forgeflow.training.jobs import JobSpec

# What a worker writes to status.json (the runner writes Queued there when it queues a job again).
WORKER_STATUSES = (JobStatus.RUNNING, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED)
MLFLOW_END = {JobStatus.COMPLETED: "FINISHED", JobStatus.FAILED: "FAILED", JobStatus.CANCELED: "KILLED"}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class JobFiles:
    """status.json and metrics.jsonl of one job folder. With `record=False` nothing is written: the data-parallel
    workers other than rank 0 keep their state in memory only, so one process writes the job's record."""

    def __init__(self, job_dir: Path, *, record: bool = True) -> None:
        self.job_dir = Path(job_dir)
        self.record = record
        self.attempt_id: str | None = None  # set by the Attempt that owns these files: it must still be current
        self.status_path = self.job_dir / "status.json"
        self.metrics_path = self.job_dir / "metrics.jsonl"
        self.state: dict[str, Any] = {
            "status": JobStatus.RUNNING,
            "step": 0,
            "max_steps": 0,
            "epoch": 0.0,
            "error": None,
            "mlflow_run_id": None,
            "updated_at": now_iso(),
        }

    def write_status(self, status: JobStatus | None = None, **fields: Any) -> dict[str, Any]:
        """Merge fields into the status and rewrite status.json atomically."""
        if status is not None:
            if status not in WORKER_STATUSES:
                raise ValueError(f"a worker does not report status {status!r}")
            self.state["status"] = status
        self.state.update(fields, updated_at=now_iso())
        with self._owned() as mine:
            if mine:
                tmp = self.status_path.with_name(f".status.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(self.state, indent=2) + "\n")
                os.replace(tmp, self.status_path)
        return self.state

    @contextmanager
    def _owned(self) -> Iterator[bool]:
        """Whether this process may write the record now; a newer start cannot claim it until the write is done."""
        if not self.record:
            yield False
            return
        if self.attempt_id is None:
            yield True
            return
        with _attempt_lock(self.job_dir, fcntl.LOCK_SH):
            self.record = _current_attempt(self.job_dir) == self.attempt_id
            yield self.record

    def drop_metrics_after(self, step: int) -> None:
        """Forget rows past `step` (a resumed job logs those steps again); -1 forgets every row."""
        if not self.metrics_path.exists():
            return
        with self._owned() as mine:
            if mine:
                kept = [row for row in read_metrics(self.job_dir) if step >= 0 and row.get("step", 0) <= step]
                tmp = self.metrics_path.with_name(f".metrics.{os.getpid()}.tmp")
                tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
                os.replace(tmp, self.metrics_path)

    def append_metrics(self, row: dict[str, Any]) -> None:
        with self._owned() as mine:
            if mine:
                with self.metrics_path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")


ATTEMPT_FILE = "attempt.json"
ATTEMPT_LOCK = ".attempt.lock"
CANCEL_FILE = "cancel.requested"


@contextmanager
def _attempt_lock(job_dir: Path, mode: int) -> Iterator[None]:
    with open(job_dir / ATTEMPT_LOCK, "a") as lock:
        fcntl.flock(lock, mode)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _current_attempt(job_dir: Path) -> str | None:
    try:
        return json.loads((job_dir / ATTEMPT_FILE).read_text())["attempt"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Attempt:
    """One start of a job, and the question its workers ask at every step: should training stop? Yes once this
    start is canceled (SIGTERM sets `event` in the process that got it; JOB_DIR/cancel.requested tells the other
    workers of a data-parallel job) or superseded: a newer start wrote its own id to JOB_DIR/attempt.json. A worker
    that outlived its node (Ray has not noticed yet, or the node is cut off) is superseded when the job is resumed
    elsewhere; from then on its `files` write nothing."""

    def __init__(self, files: JobFiles, attempt_id: str, event: threading.Event | None = None) -> None:
        self.files = files
        self.id = attempt_id
        self.event = event or threading.Event()
        files.attempt_id = attempt_id

    @classmethod
    def begin(cls, files: JobFiles, event: threading.Event) -> Attempt:
        """A new start of the job in `files.job_dir`, which from now on owns its record."""
        attempt = cls(files, uuid.uuid4().hex, event)
        (files.job_dir / CANCEL_FILE).unlink(missing_ok=True)
        tmp = files.job_dir / f".{ATTEMPT_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"attempt": attempt.id}))
        with _attempt_lock(files.job_dir, fcntl.LOCK_EX):  # after any write of an older start in progress
            os.replace(tmp, files.job_dir / ATTEMPT_FILE)
        return attempt

    @property
    def superseded(self) -> bool:
        current = _current_attempt(self.files.job_dir)
        if current != self.id:
            self.files.record = False
        return current != self.id

    def is_set(self) -> bool:
        return self.event.is_set() or self.superseded or (self.files.job_dir / CANCEL_FILE).exists()

    def cancel_everywhere(self) -> None:
        """Ask every worker of this start to stop (the driver of a data-parallel job, on SIGTERM)."""
        (self.files.job_dir / CANCEL_FILE).touch()


def read_status(job_dir: Path) -> dict[str, Any] | None:
    """The last status a worker wrote, or None before the first write."""
    try:
        return json.loads((Path(job_dir) / "status.json").read_text())
    except (OSError, ValueError):
        return None


def read_metrics(job_dir: Path) -> list[dict[str, Any]]:
    """Every metrics row so far; a line still being written is skipped."""
    rows = []
    try:
        lines = (Path(job_dir) / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


class MlflowRun:
    """One MLflow run per job, written through MlflowClient (no autologging, no environment variables)."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    @classmethod
    def start(cls, spec: JobSpec) -> "MlflowRun":
        """A new run in the job's experiment, its hyperparameters logged as params under their flat names."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=worker_uri(spec.mlflow_tracking_uri, os.environ))
        experiment = client.get_experiment_by_name(spec.mlflow_experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            location = spec.mlflow_artifact_location
            if location and "://" not in location:  # a directory (an object store URI is used as it is)
                location = str(Path(location).resolve())
            experiment_id = create_experiment(client, spec.mlflow_experiment, location)
        tags = {
            "forgeflow.job_id": spec.job_id,
            "forgeflow.base_model": spec.base_model,
            "mlflow.runName": spec.name or spec.job_id or "fine-tune",
        }
        run = client.create_run(experiment_id, tags=tags, run_name=tags["mlflow.runName"])
        self = cls(client, run.info.run_id)
        from mlflow.entities import Param

        params = spec.hyperparameters.to_dict()
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return self

    @classmethod
    def reopen(cls, spec: JobSpec, run_id: str) -> "MlflowRun | None":
        """The run of an earlier attempt of this job, marked running again; None if it is gone."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=worker_uri(spec.mlflow_tracking_uri, os.environ))
        try:
            client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
        except MlflowException:
            return None
        return cls(client, run_id)

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(k, float(v), stamp, step) for k, v in values.items() if is_finite_number(v)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def end(self, status: JobStatus) -> None:
        self.client.set_terminated(self.run_id, MLFLOW_END[status])


def create_experiment(client: Any, name: str, location: str | None) -> str:
    """The id of a new MLflow experiment `name` keeping its artifacts at `location`, or of the one another worker
    created meanwhile."""
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        # Another worker created it between our lookup and create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
