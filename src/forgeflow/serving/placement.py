"""Where a deployment's instances run. The supervisor (probes, restarts, rolling updates) and the
gateway see an `Instance`, an index and an address, and ask a `Placement` to start, stop and watch
instances; they never learn what runs them. `LocalPlacement` runs each instance as a process on
this machine, on loopback, logging to the workspace's logs folder.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from forgeflow.processes import free_port, log_tail
from forgeflow.serving.records import Deployment
from forgeflow.store.home import Paths

log = logging.getLogger("forgeflow.deployments")


@dataclass(eq=False)
class Instance:
    """One running copy of a deployment, as the supervisor and the gateway know it."""

    index: int
    url: str
    restarts: int = 0
    ready: bool = False  # passing its readiness probe: the gateway may send it requests
    ever_ready: bool = False
    retired: bool = False  # drained or replaced: its prober stops and nothing restarts it
    started_at: float = field(default_factory=time.time)


class Placement(Protocol):
    """Runs instances of deployments somewhere and answers for them."""

    def start(self, dep: Deployment, indexes: Sequence[int]) -> list[Instance]:
        """Start these instances of the deployment; each answers at its `url` once its model is loaded."""

    def stop(self, instances: Sequence[Instance], *, grace_s: float = 10.0) -> None:
        """Stop instances together: each is asked to exit, and ended after grace_s (0: at once, it hangs)."""

    def ended(self, inst: Instance) -> str | None:
        """None while the instance lives, else how it ended (e.g. 'exited with code 1')."""

    def describe(self, inst: Instance) -> dict:
        """Where the instance runs, for `online-deployment show`."""

    def log_tail(self, inst: Instance) -> str:
        """The instance's last log lines on one line, for an error message."""

    def logs(self, endpoint: str, name: str, lines: int) -> str:
        """The last lines of each instance's log, for `online-deployment get-logs`."""


@dataclass(eq=False, kw_only=True)
class LocalInstance(Instance):
    port: int
    proc: subprocess.Popen
    log_path: Path


class LocalPlacement:
    """Instances as processes on this machine, each on a free loopback port."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    def command(self, dep: Deployment, port: int) -> list[str]:
        """What an instance runs: the model server, or forgeflow.flows.serve for a flow."""
        if dep.serves_flow:
            program = ["forgeflow.flows.serve", "--flow", dep.model_path]
        else:
            program = ["forgeflow.inference.model_server", "--model-dir", dep.model_path, "--runtime", dep.runtime]
        return [sys.executable, "-m", *program, "--port", str(port), "--name", dep.name]

    def start(self, dep: Deployment, indexes: Sequence[int]) -> list[Instance]:
        return [self._spawn(dep, index) for index in indexes]

    def _spawn(self, dep: Deployment, index: int) -> LocalInstance:
        log_path = self._log_dir(dep.endpoint) / f"{dep.name}-{index}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        port = free_port()
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(self.command(dep, port), stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL,
                                    env=dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false"))
        log.info("deployment %s/%s instance %d starting on port %d (pid %d)", dep.endpoint, dep.name, index, port,
                 proc.pid)
        return LocalInstance(index=index, url=f"http://127.0.0.1:{port}", port=port, proc=proc, log_path=log_path)

    def stop(self, instances: Sequence[LocalInstance], *, grace_s: float = 10.0) -> None:
        threads = [threading.Thread(target=_terminate, args=(i.proc, grace_s)) for i in instances]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def ended(self, inst: LocalInstance) -> str | None:
        code = inst.proc.poll()
        return None if code is None else f"exited with code {code}"

    def describe(self, inst: LocalInstance) -> dict:
        return {"port": inst.port, "pid": inst.proc.pid}

    def log_tail(self, inst: LocalInstance) -> str:
        return log_tail(inst.log_path)

    def logs(self, endpoint: str, name: str, lines: int) -> str:
        out = []
        for path in sorted(self._log_dir(endpoint).glob(f"{name}-*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"==> {path.name} <==\n" + "\n".join(text))
        return "\n".join(out)

    def _log_dir(self, endpoint: str) -> Path:
        return self.paths.logs / "deployments" / endpoint


def _terminate(proc: subprocess.Popen, grace_s: float) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
