"""Local compute: each job's worker is a process on this machine.

Workers run in their own session (`start_new_session`) so a server restart does not kill them; the pid and the
host go to JOB_DIR/worker.pid, and a later server attaches to a worker whose pid is alive and (where /proc tells)
runs that job folder, so a pid reused after a machine restart is not mistaken for the worker.

A server on another host (a new leader of several servers on one database, the job folders on shared storage)
cannot see that pid: it follows the worker by its status.json instead, and judges it gone only once that has not
changed for FOREIGN_STALE_S.
"""

from __future__ import annotations

import os
import json
import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from forgeflow.errors import InvalidInput
from forgeflow.processes import pid_alive
from forgeflow.training.compute.base import TRAINING_PROGRAM, Ended, worker_log
from forgeflow.training.hyperparams import Hyperparameters, check_hardware

log = logging.getLogger("forgeflow.jobs")

PID_FILE = "worker.pid"
FOREIGN_STALE_S = 120.0  # a worker on another host whose status.json is this old is gone


class LocalWorker:
    """A worker process: the Popen this server started, or a pid adopted from an earlier server."""

    def __init__(self, pid: int, job_dir: Path, proc: subprocess.Popen | None = None) -> None:
        self.pid = pid
        self.job_dir = job_dir
        self._proc = proc

    def poll(self) -> Ended | None:
        if self._proc is not None:
            status = self._proc.poll()
            return None if status is None else Ended(status)
        # Not our child: its exit status is lost to us.
        return None if _runs_job(self.pid, self.job_dir) else Ended(None)

    def cancel(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


class ForeignWorker:
    """A worker that another host started: alive while its status.json changes; this host cannot signal it."""

    def __init__(self, pid: int, host: str, job_dir: Path) -> None:
        self.pid, self.host, self.job_dir = pid, host, job_dir
        self._told = False

    def poll(self) -> Ended | None:
        status = self.job_dir / "status.json"
        try:
            ended = json.loads(status.read_text()).get("status") in ("Completed", "Failed", "Canceled")
        except (OSError, ValueError):
            ended = False
        if ended:
            return Ended(None)
        seen = max((p.stat().st_mtime for p in (status, self.job_dir / PID_FILE) if p.exists()), default=0.0)
        if time.time() - seen < FOREIGN_STALE_S:
            return None
        return Ended(None, f"the worker (pid {self.pid} on host {self.host}, which this server cannot see) wrote no "
                           f"status for {FOREIGN_STALE_S:.0f} s: it is taken to have ended")

    def cancel(self) -> None:
        self._cannot("stop")

    def kill(self) -> None:
        self._cannot("kill")

    def _cannot(self, what: str) -> None:
        if not self._told:
            self._told = True
            log.warning("job folder %s: its worker runs on host %s (pid %d); this server cannot %s it: stop it there",
                        self.job_dir, self.host, self.pid, what)


class LocalCompute:
    """Runs workers as processes of this machine, with its hardware."""

    def check(self, hp: Hyperparameters) -> None:
        count = hp.scaling.instance_count
        if count > 1:
            raise InvalidInput(f"instance_count={count} runs {count} data-parallel workers, which needs a ray compute "
                               "target (this machine runs one worker): create one with forgeflow compute create "
                               "--name NAME --type ray --address HEAD:6379, then queue with --compute NAME",
                               field="instance_count")
        check_hardware(hp)

    def start(self, job_dir: Path, env: dict[str, str] | None = None,
              program: str = TRAINING_PROGRAM) -> LocalWorker:
        job_dir = Path(job_dir)
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false") | (env or {})
        with open(worker_log(job_dir), "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", program, str(job_dir)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env,
            )
        (job_dir / PID_FILE).write_text(f"{proc.pid} {socket.gethostname()}\n")
        return LocalWorker(proc.pid, job_dir, proc)

    def attach(self, job_dir: Path) -> LocalWorker | ForeignWorker | None:
        job_dir = Path(job_dir)
        try:
            fields = (job_dir / PID_FILE).read_text().split()
            pid, host = int(fields[0]), (fields[1] if len(fields) > 1 else None)
        except (OSError, ValueError, IndexError):
            return None
        if host is not None and host != socket.gethostname():
            return ForeignWorker(pid, host, job_dir)  # its poll says whether it still runs, and if not why
        return LocalWorker(pid, job_dir) if _runs_job(pid, job_dir) else None


def _runs_job(pid: int, job_dir: Path) -> bool:
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    return str(job_dir).encode() in cmdline
