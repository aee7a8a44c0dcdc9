"""The job runner: queues fine-tuning jobs on the `local` compute target and supervises one
worker process per running job.

Workers run in their own session (`start_new_session`) so a server restart does not kill them;
on start the runner adopts workers that are still alive and fails the ones that died unseen.
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
from forgeflow.training.tracking import read_metrics, read_status

log = logging.getLogger("forgeflow.jobs")

FINAL = {"Completed", "Failed", "Canceled"}
ACTIVE = {"Starting", "Running", "CancelRequested"}
CANCEL_GRACE_S = 20.0


def new_job_id() -> str:
    return "ft-" + uuid.uuid4().hex[:10]


class JobRunner:
    """Starts queued jobs, follows running ones, and handles cancel requests."""

    def __init__(self, store: Store, paths: Paths, *, max_concurrent_jobs: int = 1, poll_s: float = 0.5) -> None:
        self.store = store
        self.paths = paths
        self.max_concurrent_jobs = max_concurrent_jobs
        self.poll_s = poll_s
        self._procs: dict[str, subprocess.Popen] = {}
        self._cancel_sent: dict[str, float] = {}
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

    def _recover(self) -> None:
        for job in self.store.select("jobs"):
            if job["status"] in ACTIVE and not pid_alive(job["pid"]):
                st = read_status(Path(job["job_dir"])) or {}
                if st.get("status") in FINAL:
                    self._finish(job, st)
                else:
                    self.store.update("jobs", {"id": job["id"]}, {
                        "status": "Failed", "finished_at": now(),
                        "error": "the worker process ended while no server was watching it (server or machine restart)",
                    })

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
        job_id = new_job_id()
        job_dir = self.paths.jobs / job_id
        job_dir.mkdir(parents=True)
        row = {
            "id": job_id,
            "name": spec.get("name") or job_id,
            "type": "finetuning",
            "status": "Queued",
            "compute": spec.get("compute") or "local",
            "base_model": spec["base_model"],
            "base_model_path": spec["base_model_path"],
            "training_data": spec["training_data"],
            "validation_data": spec.get("validation_data"),
            "hyperparameters": spec["hyperparameters"],
            "job_dir": str(job_dir),
            "created_at": now(),
        }
        (job_dir / "spec.json").write_text(json.dumps({
            "job_id": job_id,
            "name": row["name"],
            "base_model": row["base_model"],
            "base_model_path": row["base_model_path"],
            "training_data": row["training_data"],
            "validation_data": row["validation_data"],
            "hyperparameters": row["hyperparameters"],
            "mlflow_tracking_uri": self.paths.mlflow_uri,
            "mlflow_experiment": "forgeflow-finetuning",
            "mlflow_artifact_location": str(self.paths.mlruns),
        }, indent=2))
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
        job = self.get(job_id)
        if job["status"] in FINAL:
            raise Conflict(f"job {job['id']} is already {job['status']}")
        if job["status"] == "Queued":
            self.store.update("jobs", {"id": job["id"]}, {"status": "Canceled", "finished_at": now()})
        else:
            self.store.update("jobs", {"id": job["id"]}, {"status": "CancelRequested"})
        self._wake.set()
        return self.get(job["id"])

    # -- the loop ----------------------------------------------------------------
    def tick(self) -> None:
        jobs = self.store.select("jobs", order_by="created_at")
        active = [j for j in jobs if j["status"] in ACTIVE]
        for job in active:
            self._follow(job)
        running = sum(1 for j in self.store.select("jobs") if j["status"] in ACTIVE)
        for job in jobs:
            if running >= self.max_concurrent_jobs:
                break
            if job["status"] == "Queued":
                self._launch(job)
                running += 1

    def _launch(self, job: dict[str, Any]) -> None:
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
        self.store.update("jobs", {"id": job["id"]}, {"status": "Starting", "pid": proc.pid, "started_at": now()})
        log.info("job %s started (pid %s)", job["id"], proc.pid)

    def _follow(self, job: dict[str, Any]) -> None:
        job_dir = Path(job["job_dir"])
        st = read_status(job_dir) or {}
        proc = self._procs.get(job["id"])
        exited = proc.poll() is not None if proc else not pid_alive(job["pid"])
        if job["status"] == "CancelRequested" and not exited:
            sent = self._cancel_sent.get(job["id"])
            if sent is None:
                self._signal(job["pid"], signal.SIGTERM)
                self._cancel_sent[job["id"]] = time.monotonic()
            elif time.monotonic() - sent > CANCEL_GRACE_S:
                self._signal(job["pid"], signal.SIGKILL)
        if exited:
            self._procs.pop(job["id"], None)
            self._finish(job, st, returncode=proc.returncode if proc else None)
            return
        values: dict[str, Any] = {}
        if st.get("status") == "Running" and job["status"] == "Starting":
            values["status"] = "Running"
        progress = {k: st.get(k) for k in ("step", "max_steps", "epoch", "updated_at", "eta_s") if k in st}
        if progress and progress != job.get("progress"):
            values["progress"] = progress
        if st.get("mlflow_run_id") and not job.get("mlflow_run_id"):
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
        self._cancel_sent.pop(job["id"], None)
        self.store.update("jobs", {"id": job["id"]}, {
            "status": status, "error": error if status == "Failed" else None, "finished_at": now(),
            "metrics": st.get("metrics"), "mlflow_run_id": st.get("mlflow_run_id") or job.get("mlflow_run_id"),
            "progress": {k: st.get(k) for k in ("step", "max_steps", "epoch", "updated_at") if k in st} or job.get("progress"),
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


__all__ = ["JobRunner", "FINAL", "ACTIVE", "read_metrics", "read_status", "job_output_model", "check_data_file"]
