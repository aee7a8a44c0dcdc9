"""The job runner: queues jobs (fine-tuning and evaluation) per compute target and follows each running job's worker.

Each target runs at most its `max_concurrent_jobs` at once; the rest wait Queued, oldest first. The runner is the
one writer of the jobs table: everything else reads jobs through it. Where a worker runs is the business of
the target's `Compute` (compute/base.py): `LocalCompute` for the local target, a `RayCompute` per ray target's
address; the runner starts, polls, cancels and kills workers through their handles only. A ray target's job
folders go under its `storage` (every node mounts it), others under the workspace's jobs folder. Workers outlive a
server restart: on start the runner attaches to the ones still running and fails the ones that ended unseen, which
`resume` can then continue. The worker owns `status.json`; the runner copies what it says into the store.

A job's `type` picks the program its worker runs (jobs.JOB_PROGRAMS): a fine-tuning job's worker reads spec.json,
an evaluation job's evaluation.json. A fine-tuning job with `evaluate_against_base` queues, on completion, an
evaluation of its output against its base model on its validation data, linked from its row's `evaluation_job`;
that evaluation's summary goes onto the model versions registered from the job.

Of several servers on one database only the leader runs the loop (store/leadership.py); any server takes requests.
A job is claimed (Queued to Starting in one conditional write) before its worker starts, and a cancel through any
server cancels a job only while it is still Queued, else asks the leader's loop to stop its worker.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

from forgeflow.errors import Conflict, ForgeflowError, InvalidInput, NotFound, ServerUnavailable
from forgeflow.processes import log_tail
from forgeflow.store.config import password_env
from forgeflow.store.db import Store, now
from forgeflow.store.home import Paths
from forgeflow.store.states import JobStatus
from forgeflow.store.workspace import ensure_mlflow_tables
from forgeflow.training.checkpoints import newest_checkpoint
from forgeflow.training.compute.base import CANCEL_GRACE_S, Compute, WorkerHandle, worker_log
from forgeflow.training.compute.local import LocalCompute
from forgeflow.training.compute.ray import RayCompute
from forgeflow.training.compute.targets import ComputeTargets
from forgeflow.training.hyperparams import Hyperparameters
from forgeflow.training.evaluation_jobs import against_base, read_result, rows_done
from forgeflow.training.jobs import (JOB_PROGRAMS, EvaluatedModel, EvaluationSpec, Job, JobSpec,
                                     write_json)
from forgeflow.training.tracking import read_status

log = logging.getLogger("forgeflow.jobs")

PROGRESS_KEYS = ("step", "max_steps", "epoch", "updated_at", "eta_s")
# A queued job whose cluster does not answer is tried again after 1, 2, 4 ... seconds, at most this often.
RETRY_MAX_S = 60.0
# A job whose worker was started and has not ended: a cancel asks the loop to stop it.
RUNNING_STATES = frozenset({JobStatus.STARTING, JobStatus.RUNNING, JobStatus.FINALIZING, JobStatus.CANCEL_REQUESTED})


def new_job_id(prefix: str = "ft") -> str:
    """`ft-...` for a fine-tuning job, `ev-...` for an evaluation."""
    return f"{prefix}-" + uuid.uuid4().hex[:10]


class JobRunner:
    """Starts queued jobs, follows running ones, and handles cancel and resume requests."""

    def __init__(self, store: Store, paths: Paths, *, local: Compute | None = None, poll_s: float = 0.5,
                 summarize: Callable[..., dict[str, Any]] | None = None) -> None:
        self.store = store
        # What a model version keeps of an evaluation's result.json (the evaluation layer's, handed in by the
        # composition root: it sits above this one); None: evaluations are not carried onto versions.
        self.summarize = summarize
        self.paths = paths
        self.targets = ComputeTargets(store)
        self.local: Compute = local or LocalCompute()  # what runs the jobs of `local` type targets
        self._clusters: dict[str, RayCompute] = {}  # ray target address and node type -> its compute
        self.poll_s = poll_s
        self._handles: dict[str, WorkerHandle] = {}
        self._cancel_sent: dict[str, float] = {}
        # Queued jobs whose compute could not be reached: tries so far and when to try again (warned about once).
        self._waiting: dict[str, tuple[int, float]] = {}
        self._tracking_ready = False
        # One lock for the loop and the API calls, so a cancel or resume never races a status copy.
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self._recover()
        self._thread = threading.Thread(target=self._loop, name="forgeflow-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop supervising. Running workers keep going and are attached to by the next server."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=5)

    def wake(self) -> None:
        """Run a pass now (a job was queued or a compute limit changed)."""
        self._wake.set()

    def _recover(self) -> None:
        with self._lock:
            for job in self.list():
                if not job.active:
                    continue
                if self._attach(job) is not None:
                    log.info("job %s: attached to its running worker", job.id)
                    continue
                st = read_status(job.job_dir) or {}
                if st.get("status") in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED):
                    self._finish(job, st)
                else:
                    self._write(job.id, status=JobStatus.FAILED, finished_at=now(), error=(
                        "the worker process ended while no server was watching it (server or machine restart); "
                        f"continue it from its last checkpoint with: forgeflow job resume {job.id}"))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the runner must survive a bad row or a full disk
                log.exception("job runner tick failed")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    # -- reads: the jobs table through its writer ----------------------------------
    def get(self, job_id: str) -> Job:
        """A job by id, or the newest job of that name."""
        row = self.store.get("jobs", id=job_id) or next(
            iter(self.store.select("jobs", {"name": job_id}, order_by="created_at DESC")), None
        )
        if row is None:
            raise NotFound(f"no job {job_id!r} (see: forgeflow job list)", field="job")
        return Job.from_row(row)

    def list(self, *, compute: str | None = None, oldest_first: bool = False) -> list[Job]:
        """Every job (or every job of one compute target), newest first."""
        where = {"compute": compute} if compute else None
        order = "created_at" if oldest_first else "created_at DESC"
        return [Job.from_row(row) for row in self.store.select("jobs", where, order_by=order)]

    def load(self, compute: str) -> dict[str, int]:
        """How busy a compute target is: jobs running on it and jobs waiting for it."""
        jobs = self.list(compute=compute)
        return {"running_jobs": sum(j.active for j in jobs),
                "queued_jobs": sum(j.status == JobStatus.QUEUED for j in jobs)}

    def log_text(self, job_id: str, offset: int = 0, limit: int = 256 * 1024) -> tuple[str, int]:
        """Worker output from byte `offset`, and the offset that continues after it."""
        path = worker_log(self.get(job_id).job_dir)
        if not path.exists():
            return "", 0
        with open(path, "rb") as f:
            f.seek(max(0, offset))
            data = f.read(limit)
        return data.decode(errors="replace"), max(0, offset) + len(data)

    # -- requests ----------------------------------------------------------------
    def submit(self, *, base_model: str, base_model_path: str, training_data: str, hyperparameters: Hyperparameters,
               validation_data: str | None = None, name: str | None = None, compute: str = "local") -> Job:
        """Queue a job; the hyperparameters come validated from the edge (CLI, REST body, job file)."""
        if hyperparameters.evaluation.evaluate_against_base and not validation_data:
            raise InvalidInput("evaluate_against_base=true evaluates the fine-tune against its base model on the "
                               "validation data, and this job has none: give --validation-data (a held-out chat "
                               "JSONL) or leave evaluate_against_base off", field="evaluate_against_base")
        target = self.targets.get(compute)
        self._compute(target).check(hyperparameters)
        job_id = new_job_id()
        job_dir = self._job_dir(target, job_id)
        spec = JobSpec(
            job_id=job_id, name=name or job_id, base_model=base_model, base_model_path=base_model_path,
            training_data=training_data, validation_data=validation_data, hyperparameters=hyperparameters,
            # the job file never holds a password: the worker gets it in its environment (see _launch)
            compute=target["name"], mlflow_tracking_uri=self._tracking[0],
            mlflow_artifact_location=self.paths.mlflow_artifacts,
        )
        spec.write(job_dir)
        self.store.insert("jobs", {
            "id": job_id, "name": spec.name, "type": "finetuning", "status": JobStatus.QUEUED,
            "compute": spec.compute, "base_model": base_model, "base_model_path": base_model_path,
            "training_data": training_data, "validation_data": validation_data,
            "hyperparameters": hyperparameters.to_dict(), "job_dir": str(job_dir), "created_at": now(),
        })
        self._wake.set()
        return self.get(job_id)

    def submit_evaluation(self, *, model: EvaluatedModel, data: str, baseline: EvaluatedModel | None = None,
                          metrics: tuple[str, ...] | None = None, judge_flow: str | None = None,
                          judge_connection: str | None = None, max_new_tokens: int = 128,
                          max_rows: int | None = None, name: str | None = None, compute: str = "local",
                          source_job: str | None = None) -> Job:
        """Queue an evaluation of `model` (against `baseline`) on the chat rows of `data`, validated at the edge.
        Its row reads like a fine-tuning job's: the model in base_model, the data in training_data, the baseline's
        reference in validation_data and the evaluation's settings in hyperparameters."""
        target = self.targets.get(compute)
        job_id = new_job_id("ev")
        job_dir = self._job_dir(target, job_id)
        spec = EvaluationSpec(
            job_id=job_id, name=name or job_id, model=model, baseline=baseline, data=data,
            mlflow_tracking_uri=self._tracking[0], mlflow_artifact_location=self.paths.mlflow_artifacts,
            judge_flow=judge_flow, judge_connection=judge_connection,
            max_new_tokens=max_new_tokens, max_rows=max_rows, source_job=source_job, compute=target["name"],
            **({"metrics": tuple(metrics)} if metrics else {}))
        spec.write(job_dir)
        settings = {"metrics": list(spec.metrics), "judge_flow": judge_flow, "judge_connection": judge_connection,
                    "max_new_tokens": max_new_tokens, "max_rows": max_rows, "source_job": source_job}
        self.store.insert("jobs", {
            "id": job_id, "name": spec.name, "type": "evaluation", "status": JobStatus.QUEUED,
            "compute": spec.compute, "base_model": model.ref, "base_model_path": model.path,
            "training_data": data, "validation_data": baseline.ref if baseline else None,
            "hyperparameters": settings, "job_dir": str(job_dir), "created_at": now(),
        })
        self._wake.set()
        return self.get(job_id)

    def _job_dir(self, target: dict[str, Any], job_id: str) -> Path:
        """A new job's folder: under the target's storage (every node mounts it), else the workspace's jobs."""
        job_dir = (Path(target["storage"]) / "jobs" if target.get("storage") else self.paths.jobs) / job_id
        try:
            job_dir.mkdir(parents=True)
        except OSError as exc:
            if not target.get("storage"):
                raise
            raise ServerUnavailable(
                f"compute target {target['name']!r}: its storage {target['storage']} cannot hold job folders "
                f"({exc.strerror or exc}); mount it on this server (and every node) or change it with: forgeflow "
                f"compute update --name {target['name']} --storage DIR", field="storage") from None
        return job_dir

    def cancel(self, job_id: str) -> Job:
        with self._lock:
            job = self.get(job_id)
            if job.status.terminal:
                raise Conflict(f"job {job.id} is already {job.status}")
            if not (job.status == JobStatus.QUEUED
                    and self._write(job.id, JobStatus.QUEUED, status=JobStatus.CANCELED, finished_at=now())):
                # Started meanwhile: the loop stops it. Only while it still runs: the leader may have finished it
                # since this server read it, and a Completed job must not turn Canceled.
                if not self._write(job.id, RUNNING_STATES, status=JobStatus.CANCEL_REQUESTED):
                    raise Conflict(f"job {job.id} ended meanwhile: it is {self.get(job.id).status}")
        self._wake.set()
        return self.get(job.id)

    def resume(self, job_id: str) -> Job:
        """Queue a Failed or Canceled job (or one whose worker is gone) again, continuing from its newest
        checkpoint (an evaluation: after the rows it finished): the worker reads `"resume": true` in its job file.
        Logs and metrics are appended to."""
        with self._lock:
            job = self.get(job_id)
            if job.status == JobStatus.COMPLETED:
                then = (f"read its result with: forgeflow job show {job.id}" if job.type == "evaluation" else
                        f"register its model with: forgeflow model create --name NAME --from-job {job.id}")
                raise Conflict(f"job {job.id} is Completed: there is nothing to resume ({then})")
            if job.status == JobStatus.QUEUED:
                raise Conflict(f"job {job.id} is already Queued")
            handle = self._attach(job) if job.active else None
            if handle is not None and handle.poll() is None:
                raise Conflict(f"job {job.id} is {job.status} and its worker is still running; "
                               f"cancel it first with: forgeflow job cancel {job.id}")
            spec_type = EvaluationSpec if job.type == "evaluation" else JobSpec
            dataclasses.replace(spec_type.read(job.job_dir), resume=True).write(job.job_dir)
            # The old status.json says Failed/Canceled, which must not be read as the new worker's end;
            # its MLflow run id stays, so the worker continues the same run.
            st = read_status(job.job_dir) or {}
            run_id = st.get("mlflow_run_id") or job.mlflow_run_id
            write_json(job.job_dir / "status.json",
                       st | {"status": JobStatus.QUEUED, "error": None, "mlflow_run_id": run_id})
            checkpoint = newest_checkpoint(job.job_dir / "checkpoints")
            start = checkpoint.name if checkpoint else "the start (no checkpoint yet)"
            if job.type == "evaluation":
                start = f"after the {rows_done(job.job_dir)} rows it scored"
            with open(worker_log(job.job_dir), "a") as f:
                f.write(f"\n--- {now()} resumed from {start} after {job.status} ---\n")
            self._handles.pop(job.id, None)
            self._cancel_sent.pop(job.id, None)
            self._write(job.id, status=JobStatus.QUEUED, error=None, finished_at=None)
            log.info("job %s resumed from %s", job.id, checkpoint)
        self._wake.set()
        return self.get(job.id)

    # -- the loop ----------------------------------------------------------------
    def tick(self) -> None:
        with self._lock:
            for job in self.list():
                if job.active:
                    self._follow(job)
            jobs = self.list(oldest_first=True)
            limits = self.targets.limits()
            running = Counter(job.compute for job in jobs if job.active)
            for job in jobs:
                if job.status == JobStatus.QUEUED and running[job.compute] < limits.get(job.compute, 1):
                    if time.monotonic() >= self._waiting.get(job.id, (0, 0.0))[1]:
                        running[job.compute] += self._launch(job)

    def _compute(self, target: dict[str, Any]) -> Compute:
        if target["type"] != "ray":
            return self.local
        key = f"{target['address']} {target.get('size') or ''}"
        if key not in self._clusters:
            self._clusters[key] = RayCompute(target["address"], size=target.get("size"))
        return self._clusters[key]

    def _compute_of(self, job: Job) -> Compute:
        return self._compute(self.targets.get(job.compute))

    def _attach(self, job: Job) -> WorkerHandle | None:
        handle = self._handles.get(job.id) or self._compute_of(job).attach(job.job_dir)
        if handle is not None:
            self._handles[job.id] = handle
        return handle

    @cached_property
    def _tracking(self) -> tuple[str, dict[str, str]]:
        """MLflow's URI for a job file (no password) and the environment that hands a worker its password."""
        return password_env(self.paths.mlflow_uri)

    def _prepare_tracking(self) -> None:
        """Create MLflow's tracking database once, here: workers that start together on a fresh
        workspace would otherwise race each other through MLflow's schema migrations and fail."""
        if self._tracking_ready:
            return
        from mlflow import MlflowClient

        ensure_mlflow_tables(self.paths.mlflow_uri)  # on the store's Postgres: under its migration lock
        MlflowClient(tracking_uri=self.paths.mlflow_uri).search_experiments(max_results=1)
        self._tracking_ready = True

    def _launch(self, job: Job) -> bool:
        """Start the job's worker; False when its compute could not (the job is then Failed)."""
        self._prepare_tracking()
        if not self._write(job.id, JobStatus.QUEUED, status=JobStatus.STARTING):
            return False  # canceled through another server since this pass read it
        try:
            self._handles[job.id] = self._compute_of(job).start(job.job_dir, env=self._tracking[1],
                                                                program=JOB_PROGRAMS[job.type])
        except ServerUnavailable as exc:  # its cluster is not up (yet): the job waits Queued and is tried again
            if not self._write(job.id, JobStatus.STARTING, status=JobStatus.QUEUED):
                self._write(job.id, status=JobStatus.CANCELED, finished_at=now())  # a cancel came meanwhile
            tries = self._waiting.get(job.id, (0, 0.0))[0]
            if not tries:
                log.warning("job %s waits: %s", job.id, exc.message)
            self._waiting[job.id] = (tries + 1, time.monotonic() + min(RETRY_MAX_S, 2.0 ** tries))
            return False
        except ForgeflowError as exc:  # e.g. its cluster refused the job: it can be resumed later
            self._waiting.pop(job.id, None)
            self._write(job.id, status=JobStatus.FAILED, finished_at=now(), error=(
                f"could not start: {exc.message} (queue it again with: forgeflow job resume {job.id})"))
            log.warning("job %s could not start on %s: %s", job.id, job.compute, exc.message)
            return False
        self._waiting.pop(job.id, None)
        self._write(job.id, started_at=job.started_at or now())
        log.info("job %s started on %s", job.id, job.compute)
        return True

    def _follow(self, job: Job) -> None:
        st = read_status(job.job_dir) or {}
        handle = self._attach(job)
        ended = handle.poll() if handle is not None else None
        if handle is not None and ended is None and job.status == JobStatus.CANCEL_REQUESTED:
            sent = self._cancel_sent.get(job.id)
            if sent is None:
                handle.cancel()
                self._cancel_sent[job.id] = time.monotonic()
            elif time.monotonic() - sent > CANCEL_GRACE_S:
                log.warning("job %s: still running %.0fs after cancel, killing it", job.id, CANCEL_GRACE_S)
                handle.kill()
        if handle is None or ended is not None:
            self._handles.pop(job.id, None)
            self._finish(job, st, exit_status=ended.exit_status if ended else None,
                         reason=ended.reason if ended else None)
            return
        values: dict[str, Any] = {}
        if st.get("status") == JobStatus.RUNNING and job.status == JobStatus.STARTING:
            values["status"] = JobStatus.RUNNING
        progress = {k: st.get(k) for k in PROGRESS_KEYS if k in st}
        if progress and progress != job.progress:
            values["progress"] = progress
        if st.get("mlflow_run_id") and st["mlflow_run_id"] != job.mlflow_run_id:
            values["mlflow_run_id"] = st["mlflow_run_id"]
        if values:
            self._write(job.id, **values)

    def _finish(self, job: Job, st: dict[str, Any], exit_status: int | None = None,
                reason: str | None = None) -> None:
        reported = st.get("status")
        if job.status == JobStatus.CANCEL_REQUESTED:
            status = JobStatus.CANCELED
        elif reported in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED):
            status = JobStatus(reported)
        else:
            status = JobStatus.FAILED
        error = st.get("error")
        if status == JobStatus.FAILED and not error:
            error = (reason or "the worker process ended" if exit_status is None
                     else f"the worker exited with code {exit_status}")
            tail = log_tail(worker_log(job.job_dir), 5, 600)
            if tail:
                error += ": " + tail
        if status == JobStatus.FAILED and newest_checkpoint(job.job_dir / "checkpoints") is not None:
            error += f" (continue from its last checkpoint with: forgeflow job resume {job.id})"
        elif status == JobStatus.FAILED and job.type == "evaluation" and rows_done(job.job_dir):
            error += f" (continue after the rows it scored with: forgeflow job resume {job.id})"
        self._cancel_sent.pop(job.id, None)
        progress = {k: st.get(k) for k in PROGRESS_KEYS if k in st and k != "eta_s"}
        # a fine-tune's evaluation is queued first and linked in the same write: no reader sees it Completed unlinked
        linked = self._evaluate_against_base(job) if status == JobStatus.COMPLETED else {}
        self._write(job.id, status=status, error=error if status == JobStatus.FAILED else None, finished_at=now(),
                    metrics=st.get("metrics") or job.metrics, progress=progress or job.progress,
                    mlflow_run_id=st.get("mlflow_run_id") or job.mlflow_run_id, **linked)
        log.info("job %s %s", job.id, status)
        if status == JobStatus.COMPLETED and job.type == "evaluation" and job.hyperparameters.get("source_job"):
            with self._after_completion(job):
                from forgeflow.registry import models

                completed = self.get(job.id)
                for version in models.list_models(include_archived=True):
                    if version.source_job == job.hyperparameters["source_job"]:
                        self.record_evaluation(completed, version.ref)

    @contextmanager
    def _after_completion(self, job: Job) -> Iterator[None]:
        """Around what a completed job sets off (a fine-tune's evaluation against its base, an evaluation's summary
        on the versions registered from the fine-tune it evaluated): a failure there leaves the job Completed and
        says why in its log."""
        try:
            yield
        except Exception as exc:  # the job itself succeeded; what follows it must not fail the loop
            message = exc.message if isinstance(exc, ForgeflowError) else repr(exc)
            log.warning("job %s: after completion: %s", job.id, message)
            try:
                with open(worker_log(job.job_dir), "a") as f:
                    f.write(f"\n--- {now()} after completion: {message} ---\n")
            except OSError:  # its storage failed too: the server's log above says it
                pass

    def _evaluate_against_base(self, job: Job) -> dict[str, str]:
        """Queue the evaluation of a completing fine-tune against its base model on its validation data, once; the
        link for its row ({} when there is none to queue, or queueing failed)."""
        if (job.type != "finetuning" or not job.hyperparameters.get("evaluate_against_base") or job.evaluation_job
                or not job.validation_data):
            return {}
        with self._after_completion(job):
            for row in self.store.select("jobs", {"type": "evaluation"}, order_by="created_at"):
                if Job.from_row(row).hyperparameters.get("source_job") == job.id:  # queued before the job's
                    return {"evaluation_job": row["id"]}  # Completed write failed (a database error, a restart)
            evaluation = self.submit_evaluation(**against_base(dataclasses.replace(job, status=JobStatus.COMPLETED)))
            log.info("job %s: evaluation %s against its base queued", job.id, evaluation.id)
            return {"evaluation_job": evaluation.id}
        return {}

    def evaluation_result(self, job_id: str) -> dict[str, Any]:
        """The result.json of a Completed evaluation job (Conflict, with its status, while it is not)."""
        return read_result(self.get(job_id))

    def carry_evaluation(self, job: Job, version_ref: str) -> bool:
        """A version registered from fine-tuning `job` gets the summary of the job's evaluation against its base,
        when that has completed (else its completion puts it there); whether it did."""
        if not job.evaluation_job:
            return False
        evaluation = self.get(job.evaluation_job)
        if evaluation.status != JobStatus.COMPLETED:
            return False
        self.record_evaluation(evaluation, version_ref)
        return True

    def record_evaluation(self, evaluation: Job, version_ref: str) -> None:
        """Put a completed evaluation's summary on a registered model version (the registry's evaluation tag)."""
        from forgeflow.registry.evaluations import record_evaluation

        if self.summarize is None:
            raise ForgeflowError(f"this job runner records no evaluation on a model version ({version_ref})")
        summary = self.summarize(self.evaluation_result(evaluation.id), finished_at=evaluation.finished_at or now(),
                                 mlflow_run_id=evaluation.mlflow_run_id)
        record_evaluation(version_ref, summary)
        log.info("evaluation %s recorded on %s", evaluation.id, version_ref)

    def _write(self, job_id: str, expect: JobStatus | frozenset[JobStatus] | None = None, **values: Any) -> bool:
        """The one place a jobs row changes after it is inserted. With `expect`, only while the job still has that
        status (or one of those statuses: another server may have changed it since it was read); whether it
        changed."""
        where = {"id": job_id} | ({"status": expect} if expect else {})
        return bool(self.store.update("jobs", where, values))

