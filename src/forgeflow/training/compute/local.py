"""Local compute: each job's worker is a process on this machine.

Workers run in their own session (`start_new_session`) so a server restart does not kill them; the pid goes to
JOB_DIR/worker.pid, and a later server attaches to a worker whose pid is alive and (where /proc tells) runs that
job folder, so a pid reused after a machine restart is not mistaken for the worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from forgeflow.errors import InvalidInput
from forgeflow.processes import pid_alive
from forgeflow.training.compute.base import Ended, worker_log
from forgeflow.training.hyperparams import Hyperparameters, check_hardware

PID_FILE = "worker.pid"


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

    def start(self, job_dir: Path, env: dict[str, str] | None = None) -> LocalWorker:
        job_dir = Path(job_dir)
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false") | (env or {})
        with open(worker_log(job_dir), "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "forgeflow.training.worker", str(job_dir)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env,
            )
        (job_dir / PID_FILE).write_text(f"{proc.pid}\n")
        return LocalWorker(proc.pid, job_dir, proc)

    def attach(self, job_dir: Path) -> LocalWorker | None:
        job_dir = Path(job_dir)
        try:
            pid = int((job_dir / PID_FILE).read_text())
        except (OSError, ValueError):
            return None
        return LocalWorker(pid, job_dir) if _runs_job(pid, job_dir) else None


def _runs_job(pid: int, job_dir: Path) -> bool:
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    return str(job_dir).encode() in cmdline
