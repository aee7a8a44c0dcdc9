"""Ray compute: each job is a Ray job on the cluster at a ray target's address, submitted through Ray's Job
Submission API (the dashboard; this server needs no driver connection for jobs).

The entrypoint runs on a worker node of the cluster (it asks for a CPU, which a head started with `--num-cpus=0`
does not offer): `python -m forgeflow.training.worker JOB_DIR` for one training worker (with a GPU when the cluster
has one), `python -m forgeflow.training.distributed JOB_DIR` (Ray Train, data-parallel) when `instance_count` is
above 1, and another job type's program (`forgeflow.evaluation.worker`) as one worker the same way. Its output goes straight to worker_log(JOB_DIR), and it writes status.json, metrics and checkpoints there:
the job folder lives on the target's `storage`, which every node mounts at the same path, so a resumed job continues
from its newest checkpoint on whichever node it lands. The base model, the data files and the MLflow tracking store
named in the job file must be reachable from the nodes too.

A target with a `size` runs the entrypoint (and Ray Train's workers) only on nodes of that node type, the label
Ray's autoscaler gives the nodes it starts.

The nodes run their own Python: `FORGEFLOW_RAY_PYTHON` (default `python` on the node's PATH), which must have
forgeflow installed at this server's version; the worker checks FORGEFLOW_VERSION and fails with a clear message
otherwise.

Cancel is Ray's `stop_job`: SIGTERM to the entrypoint's processes, whose handler stops at the next step boundary. Ray
SIGKILLs them itself once the job's RAY_JOB_STOP_WAIT_TIME_S runs out, which is set to the seam's CANCEL_GRACE_S. The
submission id is kept in JOB_DIR/ray_job.json so a restarted server attaches again; every start (a resume) submits
under a new id, since Ray refuses a used one.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
import uuid
from pathlib import Path

from forgeflow import __version__
from forgeflow.errors import InvalidInput, UpstreamError
from forgeflow.raycluster import (NODE_TYPE_LABEL, check_address, check_reachable, forget, node_type_resources,
                                  submission_client, unreachable)
from forgeflow.training.compute.base import CANCEL_GRACE_S, TRAINING_PROGRAM, Ended, worker_log
from forgeflow.training.distributed import CLUSTER_ENV, NODE_TYPE_ENV, TRAIN_ENV
from forgeflow.training.hyperparams import Hyperparameters
from forgeflow.training.jobs import EvaluationSpec, JobSpec, write_json
from forgeflow.training.worker import VERSION_ENV

log = logging.getLogger("forgeflow.jobs")

PYTHON_ENV = "FORGEFLOW_RAY_PYTHON"
SUBMISSION_FILE = "ray_job.json"
# Environment the worker needs on every node; the hub switches travel only when this server has them set.
WORKER_ENV = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
PASSED_ON = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
# A job whose cluster does not answer for this long is taken as ended unseen (Failed; `job resume` continues it).
UNREACHABLE_S = 120.0
# A TCP check of the cluster's address before each call: Ray spends up to a minute finding the dashboard of a GCS
# that does not answer, and the runner's pass must not wait that long.
REACH_S = 2.0


class RayWorker:
    """One submission of a job to the cluster, followed through the dashboard."""

    def __init__(self, address: str, submission_id: str, job_dir: Path) -> None:
        self.address = address
        self.submission_id = submission_id
        self.job_dir = job_dir
        self._silent_since: float | None = None

    def poll(self) -> Ended | None:
        try:
            check_reachable(self.address, REACH_S)
            info = submission_client(self.address).get_job_info(self.submission_id)
        except Exception as exc:
            if isinstance(exc, RuntimeError) and "does not exist" in str(exc):
                # Ray's answer to an unknown id: the cluster restarted and lost its jobs
                self._note(f"ray job {self.submission_id} is unknown to the cluster at {self.address}")
                return Ended(None)
            return self._silent(exc)
        self._silent_since = None
        if not info.status.is_terminal():
            return None
        reason = (info.message or "").strip().splitlines()
        self._note(f"ray job {self.submission_id} {info.status}" + (f": {reason[0][:2000]}" if reason else ""))
        if info.driver_exit_code is not None:
            return Ended(info.driver_exit_code)
        return Ended(0 if info.status == "SUCCEEDED" else None)

    def cancel(self) -> None:
        self._stop()

    def kill(self) -> None:
        # Ray has no stop without a grace; the one it was given (RAY_JOB_STOP_WAIT_TIME_S) is the runner's, so by
        # now Ray has SIGKILLed the entrypoint or is about to. Asking again covers a stop request that was lost.
        self._stop()

    def _stop(self) -> None:
        try:
            submission_client(self.address).stop_job(self.submission_id)
        except Exception as exc:  # the runner asks again when its grace runs out
            log.warning("ray job %s: stop request to %s failed: %s", self.submission_id, self.address, exc)

    def _silent(self, exc: Exception) -> Ended | None:
        """The cluster does not answer (refused, reset, no dashboard): wait for it a while, maybe on a new port."""
        forget(self.address)
        if self._silent_since is None:
            self._silent_since = time.monotonic()
            log.warning("ray job %s: the cluster at %s does not answer: %s", self.submission_id, self.address, exc)
        if time.monotonic() - self._silent_since < UNREACHABLE_S:
            return None
        self._note(f"the Ray cluster at {self.address} has not answered for {UNREACHABLE_S:.0f}s: {exc}")
        return Ended(None)

    def _note(self, line: str) -> None:
        """How the Ray job ended, in the job's log (Ray's reason is all a job that never started leaves)."""
        with open(worker_log(self.job_dir), "a") as f:
            f.write(f"{line}\n")


class RayCompute:
    """Runs workers as Ray jobs on the cluster at `address`."""

    def __init__(self, address: str, size: str | None = None) -> None:
        self.address = check_address(address)
        self.size = size  # the node type jobs run on (the target's size), or any node

    def check(self, hp: Hyperparameters) -> None:
        """Nothing to refuse here: the hardware a job needs is checked where it runs, on the cluster's nodes."""

    def start(self, job_dir: Path, env: dict[str, str] | None = None,
              program: str = TRAINING_PROGRAM) -> RayWorker:
        """Submit the job; `env` travels in the job's runtime_env (kept by the cluster, not in the job folder)."""
        job_dir = Path(job_dir)
        if program == TRAINING_PROGRAM:
            spec: JobSpec | EvaluationSpec = JobSpec.read(job_dir)
            workers = spec.hyperparameters.scaling.instance_count
            module = program if workers == 1 else "forgeflow.training.distributed"
        else:
            spec, workers, module = EvaluationSpec.read(job_dir), 1, program
        python = shlex.split(os.environ.get(PYTHON_ENV) or "python")
        command = shlex.join([*python, "-m", module, str(job_dir)])
        entrypoint = f"{command} >> {shlex.quote(str(worker_log(job_dir)))} 2>&1"
        env = WORKER_ENV | {k: os.environ[k] for k in PASSED_ON if k in os.environ} | {
            VERSION_ENV: __version__, "RAY_JOB_STOP_WAIT_TIME_S": str(int(CANCEL_GRACE_S))} | (env or {})
        if "://" not in self.address and self.address != "auto":
            # Ray points a job's driver at the newest cluster started on its node ("auto"), and so do the state
            # lookups of Ray Train's actors: on a machine running several clusters that can be another one.
            env |= {"RAY_ADDRESS": self.address, CLUSTER_ENV: self.address}
        if workers > 1:
            env |= TRAIN_ENV
        resources: dict[str, object] = {"entrypoint_num_cpus": 1}
        if self.size:  # the driver and every Ray Train worker go to nodes of the target's node type
            resources["entrypoint_label_selector"] = {NODE_TYPE_LABEL: self.size}
            env |= {NODE_TYPE_ENV: self.size}
        check_reachable(self.address, REACH_S)
        if workers == 1 and node_type_resources(self.address, self.size).get("GPU", 0) > 0:
            resources["entrypoint_num_gpus"] = 1
        submission_id = f"{spec.job_id or job_dir.name}-{uuid.uuid4().hex[:8]}"
        client = submission_client(self.address)
        try:
            client.submit_job(entrypoint=entrypoint, submission_id=submission_id, runtime_env={"env_vars": env},
                              metadata={"forgeflow_job": spec.job_id, "forgeflow_name": spec.name}, **resources)
        except ValueError as exc:  # Ray checked the request itself (a label selector it refuses, ...)
            raise InvalidInput(f"the Ray cluster at {self.address} cannot take job {spec.job_id}: {exc}",
                               field="size" if "label" in str(exc).lower() else None) from None
        except RuntimeError as exc:  # the dashboard answered with an error
            if "try again later" in str(exc):  # its job agent is not up yet (a cluster that just started)
                raise unreachable(self.address, exc) from None
            raise UpstreamError(f"the Ray cluster at {self.address} refused job {spec.job_id}: {exc}") from None
        except Exception as exc:
            raise unreachable(self.address, exc) from None
        write_json(job_dir / SUBMISSION_FILE, {"address": self.address, "submission_id": submission_id})
        return RayWorker(self.address, submission_id, job_dir)

    def attach(self, job_dir: Path) -> RayWorker | None:
        """The job's submission, on the cluster it was submitted to (the target's address may have changed)."""
        job_dir = Path(job_dir)
        try:
            submitted = json.loads((job_dir / SUBMISSION_FILE).read_text())
            submission_id = submitted["submission_id"]
            address = check_address(submitted.get("address") or self.address)
        except (OSError, ValueError, KeyError, TypeError, InvalidInput):
            return None
        worker = RayWorker(address, submission_id, job_dir)
        try:
            check_reachable(address, REACH_S)
            info = submission_client(address).get_job_info(submission_id)
        except RuntimeError:  # unknown to the cluster
            return None
        except Exception:  # unreachable for now: the handle's poll decides how long to wait for it
            return worker
        return None if info.status.is_terminal() else worker
