"""The job runner: queues fine-tuning jobs per compute target and supervises one worker process
per running job.

Each target runs at most its `max_concurrent_jobs` at once; the rest wait Queued, oldest first.
Workers run in their own session (`start_new_session`) so a server restart does not kill them;
on start the runner adopts workers that are still alive (by pid, checked against the job folder
on the command line) and fails the ones that died unseen, which `resume` can then continue.
The worker owns `status.json`; the runner copies what it says into the store.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from forgeflow.errors import Conflict, NotFound
from forgeflow.processes import log_tail, pid_alive
from forgeflow.store.db import Store, now
from forgeflow.store.home import Paths
from forgeflow.training.checkpoints import newest_checkpoint
from forgeflow.training.compute import ComputeTargets
from forgeflow.training.tracking import read_metrics, read_status

log = logging.getLogger("forgeflow.jobs")

FINAL = {"Completed", "Failed", "Canceled"}
ACTIVE = {"Starting", "Running", "CancelRequested"}
# The worker stops at the next step boundary on SIGTERM (saving nothing half-written); a step of a
# small model on CPU takes a second or two, so past this grace the worker is stuck and gets SIGKILL.
CANCEL_GRACE_S = 15.0
PROGRESS_KEYS = ("step", "max_steps", "epoch", "updated_at", "eta_s")


def new_job_id() -> str:
    return "ft-" + uuid.uuid4().hex[:10]


class JobRunner:
    """Starts queued jobs, follows running ones, and handles cancel and resume requests."""

    def __init__(self, store: Store, paths: Paths, *, poll_s: float = 0.5) -> None:
        self.store = store
        self.paths = paths
        self.compute = ComputeTargets(store)
        self.poll_s = poll_s
        self._procs: dict[str, subprocess.Popen] = {}
        self._cancel_sent: dict[str, float] = {}
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
        """Stop supervising. Running workers keep going and are adopted by the next server."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=5)

    def wake(self) -> None:
        """Run a pass now (a job was queued or a compute limit changed)."""
        self._wake.set()

    def _recover(self) -> None:
        with self._lock:
            for job in self.store.select("jobs"):
                if job["status"] in ACTIVE and not worker_alive(job):
                    st = read_status(Path(job["job_dir"])) or {}
                    if st.get("status") in FINAL:
                        self._finish(job, st)
                    else:
                        self.store.update("jobs", {"id": job["id"]}, {
                            "status": "Failed", "finished_at": now(),
                            "error": "the worker process ended while no server was watching it (server or machine "
                                     f"restart); continue it from its last checkpoint with: forgeflow job resume {job['id']}",
                        })
                elif job["status"] in ACTIVE:
                    log.info("job %s: adopted running worker (pid %s)", job["id"], job["pid"])

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the runner must survive a bad row or a full disk
                log.exception("job runner tick failed")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    # -- API used by the REST layer ---------------------------------------------
    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        compute = self.compute.get(spec.get("compute") or "local")["name"]
        job_id = new_job_id()
        job_dir = self.paths.jobs / job_id
        job_dir.mkdir(parents=True)
        row = {
            "id": job_id,
            "name": spec.get("name") or job_id,
            "type": "finetuning",
            "status": "Queued",
            "compute": compute,
            "base_model": spec["base_model"],
            "base_model_path": spec["base_model_path"],
            "training_data": spec["training_data"],
            "validation_data": spec.get("validation_data"),
            "hyperparameters": spec["hyperparameters"],
            "job_dir": str(job_dir),
            "created_at": now(),
        }
        write_spec(job_dir, {
            "job_id": job_id,
            "name": row["name"],
            "base_model": row["base_model"],
            "base_model_path": row["base_model_path"],
            "training_data": row["training_data"],
            "validation_data": row["validation_data"],
            "hyperparameters": row["hyperparameters"],
            "compute": compute,
            "mlflow_tracking_uri": self.paths.mlflow_uri,
            "mlflow_experiment": "forgeflow-finetuning",
            "mlflow_artifact_location": str(self.paths.mlruns),
        })
        self.store.insert("jobs", row)
        self._wake.set()
        return self.get(job_id)

    def get(self, job_id: str) -> dict[str, Any]:
        job = self.store.get("jobs", id=job_id) or next(
            iter(self.store.select("jobs", {"name": job_id}, order_by="created_at DESC")), None
        )
        if job is None:
            raise NotFound(f"no job {job_id!r} (see: forgeflow job list)", field="job")
        return job

    def cancel(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self.get(job_id)
            if job["status"] in FINAL:
                raise Conflict(f"job {job['id']} is already {job['status']}")
            if job["status"] == "Queued":
                self.store.update("jobs", {"id": job["id"]}, {"status": "Canceled", "finished_at": now()})
            else:
                self.store.update("jobs", {"id": job["id"]}, {"status": "CancelRequested"})
        self._wake.set()
        return self.get(job["id"])

    def resume(self, job_id: str) -> dict[str, Any]:
        """Queue a Failed or Canceled job (or one whose worker is gone) again, continuing from its newest
        checkpoint: the worker reads `"resume": true` in spec.json. Logs and metrics are appended to."""
        with self._lock:
            job = self.get(job_id)
            if job["status"] == "Completed":
                raise Conflict(f"job {job['id']} is Completed: there is nothing to resume (register its model with: "
                               f"forgeflow model create --name NAME --from-job {job['id']})")
            if job["status"] == "Queued":
                raise Conflict(f"job {job['id']} is already Queued")
            if job["status"] in ACTIVE and worker_alive(job):
                raise Conflict(f"job {job['id']} is {job['status']} and its worker (pid {job['pid']}) is still running; "
                               f"cancel it first with: forgeflow job cancel {job['id']}")
            job_dir = Path(job["job_dir"])
            spec = json.loads((job_dir / "spec.json").read_text())
            write_spec(job_dir, spec | {"resume": True})
            # The old status.json says Failed/Canceled, which must not be read as the new worker's end;
            # its MLflow run id stays, so the worker continues the same run.
            st = read_status(job_dir) or {}
            write_json(job_dir / "status.json", st | {
                "status": "Queued", "error": None, "mlflow_run_id": st.get("mlflow_run_id") or job.get("mlflow_run_id"),
            })
            checkpoint = newest_checkpoint(job_dir / "checkpoints")
            with open(job_dir / "worker.log", "a") as f:
                f.write(f"\n--- {now()} resumed from {checkpoint.name if checkpoint else 'the start (no checkpoint yet)'}"
                        f" after {job['status']} ---\n")
            self._procs.pop(job["id"], None)
            self._cancel_sent.pop(job["id"], None)
            self.store.update("jobs", {"id": job["id"]}, {
                "status": "Queued", "error": None, "finished_at": None, "pid": None,
            })
            log.info("job %s resumed from %s", job["id"], checkpoint)
        self._wake.set()
        return self.get(job["id"])

    # -- the loop ----------------------------------------------------------------
    def tick(self) -> None:
        with self._lock:
            jobs = self.store.select("jobs", order_by="created_at")
            for job in jobs:
                if job["status"] in ACTIVE:
                    self._follow(job)
            jobs = self.store.select("jobs", order_by="created_at")
            limits = self.compute.limits()
            running: dict[str, int] = {}
            for job in jobs:
                if job["status"] in ACTIVE:
                    running[job["compute"]] = running.get(job["compute"], 0) + 1
            for job in jobs:
                if job["status"] != "Queued":
                    continue
                target = job["compute"]
                if running.get(target, 0) >= limits.get(target, 1):
                    continue
                self._launch(job)
                running[target] = running.get(target, 0) + 1

    def _prepare_tracking(self) -> None:
        """Create MLflow's tracking database once, here: workers that start together on a fresh
        workspace would otherwise race each other through MLflow's schema migrations and fail."""
        if self._tracking_ready:
            return
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=self.paths.mlflow_uri).search_experiments(max_results=1)
        self._tracking_ready = True

    def _launch(self, job: dict[str, Any]) -> None:
        self._prepare_tracking()
        job_dir = Path(job["job_dir"])
        logf = open(job_dir / "worker.log", "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        proc = subprocess.Popen(
            [sys.executable, "-m", "forgeflow.training.worker", str(job_dir)],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
        )
        logf.close()
        self._procs[job["id"]] = proc
        self.store.update("jobs", {"id": job["id"]}, {
            "status": "Starting", "pid": proc.pid, "started_at": job.get("started_at") or now(),
        })
        log.info("job %s started on %s (pid %s)", job["id"], job["compute"], proc.pid)

    def _follow(self, job: dict[str, Any]) -> None:
        job_dir = Path(job["job_dir"])
        st = read_status(job_dir) or {}
        proc = self._procs.get(job["id"])
        exited = proc.poll() is not None if proc else not worker_alive(job)
        if job["status"] == "CancelRequested" and not exited:
            sent = self._cancel_sent.get(job["id"])
            if sent is None:
                self._signal(job["pid"], signal.SIGTERM)
                self._cancel_sent[job["id"]] = time.monotonic()
            elif time.monotonic() - sent > CANCEL_GRACE_S:
                log.warning("job %s: no exit %.0fs after SIGTERM, sending SIGKILL", job["id"], CANCEL_GRACE_S)
                self._signal(job["pid"], signal.SIGKILL)
        if exited:
            self._procs.pop(job["id"], None)
            self._finish(job, st, returncode=proc.returncode if proc else None)
            return
        values: dict[str, Any] = {}
        if st.get("status") == "Running" and job["status"] == "Starting":
            values["status"] = "Running"
        progress = {k: st.get(k) for k in PROGRESS_KEYS if k in st}
        if progress and progress != job.get("progress"):
            values["progress"] = progress
        if st.get("mlflow_run_id") and st["mlflow_run_id"] != job.get("mlflow_run_id"):
            values["mlflow_run_id"] = st["mlflow_run_id"]
        if values:
            self.store.update("jobs", {"id": job["id"]}, values)

    def _finish(self, job: dict[str, Any], st: dict[str, Any], returncode: int | None = None) -> None:
        status = st.get("status")
        if job["status"] == "CancelRequested":
            status = "Canceled"
        elif status not in FINAL:
            status = "Failed"
        error = st.get("error")
        if status == "Failed" and not error:
            error = f"the worker exited with code {returncode}" if returncode is not None else "the worker process ended"
            tail = log_tail(Path(job["job_dir"]) / "worker.log", 5, 600)
            if tail:
                error += ": " + tail
        if status == "Failed" and newest_checkpoint(Path(job["job_dir"]) / "checkpoints") is not None:
            error += f" (continue from its last checkpoint with: forgeflow job resume {job['id']})"
        self._cancel_sent.pop(job["id"], None)
        progress = {k: st.get(k) for k in PROGRESS_KEYS if k in st and k != "eta_s"}
        self.store.update("jobs", {"id": job["id"]}, {
            "status": status, "error": error if status == "Failed" else None, "finished_at": now(),
            "metrics": st.get("metrics") or job.get("metrics"),
            "mlflow_run_id": st.get("mlflow_run_id") or job.get("mlflow_run_id"),
            "progress": progress or job.get("progress"),
        })
        log.info("job %s %s", job["id"], status)

    @staticmethod
    def _signal(pid: int | None, sig: int) -> None:
        if not pid:
            return
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def worker_alive(job: dict[str, Any]) -> bool:
    """The job's worker still runs: its pid is alive and (where /proc tells) runs this job's folder,
    so a pid reused after a machine restart is not mistaken for the worker."""
    pid = job.get("pid")
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    return str(job["job_dir"]).encode() in cmdline


def write_spec(job_dir: Path, spec: dict[str, Any]) -> None:
    write_json(job_dir / "spec.json", spec)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write a JSON file atomically (a worker or the runner may read it at any moment)."""
    tmp = path.with_name(f".{path.name}.runner.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)


def job_output_model(job: dict[str, Any]) -> Path:
    """The MLflow model a completed job wrote; clear errors otherwise."""
    if job["status"] != "Completed":
        raise Conflict(f"job {job['id']} is {job['status']}, not Completed: it has no model to register", field="from_job")
    out = Path(job["job_dir"]) / "outputs" / "mlflow_model"
    if not (out / "MLmodel").exists():
        raise NotFound(f"job {job['id']} completed but its output {out} is missing", field="from_job")
    return out


def check_data_file(path: str | None, field: str) -> str | None:
    if path is None:
        return None
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise NotFound(f"{field.replace('_', ' ')} file {p} does not exist", field=field)
    return str(p)


__all__ = ["JobRunner", "FINAL", "ACTIVE", "read_metrics", "read_status", "job_output_model", "check_data_file",
           "worker_alive"]
