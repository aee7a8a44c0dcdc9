"""Where a deployment's instances run. The supervisor (probes, restarts, rolling updates) and the
gateway see an `Instance`, an index, an address and a secret, and ask a `Placement` to start, stop and
watch instances; they never learn what runs them. `LocalPlacement` runs each instance as a process on
this machine, on loopback, logging to the workspace's logs folder; `TargetPlacement` sends each
deployment to the placement of its compute target (`local`, or a Ray cluster's `RayPlacement`, which
runs each instance on a cluster node). An instance whose `url` is still empty is being placed (a
cluster may first have to find or start a node for it): it is not probed or sent requests yet.

An instance answers only requests that carry its secret (`Instance.auth`), fresh each time it starts and
known only to this server: a placement hands it to what it runs without putting it on a command line.
Instances must not outlive their server: a local instance exits when its lifeline pipe to the server
closes, and a starting server stops what a server of its workspace that is gone left running
(`stop_leftovers`); the instances of another server still running on the same workspace are its own.
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
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from forgeflow.processes import (INSTANCE_SECRET_ENV, LIFELINE_FD_ENV, cmdline, free_port, log_tail, pid_alive,
                                 start_time)
from forgeflow.serving.records import Deployment
from forgeflow.serving.specs import LOCAL_COMPUTE, MAX_PENDING_PER_INSTANCE, SCORING_MAX_BYTES
from forgeflow.store.home import Paths
from forgeflow.store.secrets import new_key, write_private

log = logging.getLogger("forgeflow.deployments")


@dataclass(eq=False)
class Instance:
    """One running copy of a deployment, as the supervisor and the gateway know it."""

    index: int
    url: str  # empty while the instance is being placed
    secret: str = field(default_factory=new_key, repr=False)  # what the instance requires; fresh for each start
    restarts: int = 0
    ready: bool = False  # passing its readiness probe: the gateway may send it requests
    ever_ready: bool = False
    retired: bool = False  # drained or replaced: its prober stops and nothing restarts it
    started_at: float = field(default_factory=time.time)

    @property
    def auth(self) -> dict[str, str]:
        """The header every request to the instance carries: the gateway's and the supervisor's probes."""
        return {"authorization": f"Bearer {self.secret}"}


class Placement(Protocol):
    """Runs instances of deployments somewhere and answers for them."""

    def start(self, dep: Deployment, indexes: Sequence[int]) -> list[Instance]:
        """Start these instances of the deployment; each answers at its `url` once its model is loaded, and
        only requests carrying its `auth` header."""

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

    def forget(self, endpoint: str, name: str) -> None:
        """The deployment is deleted (its instances stopped): drop what is kept of them, their logs included,
        so a new deployment of the same name starts with none."""

    def stop_leftovers(self) -> int:
        """At server start: stop the instances that servers of this workspace which are gone left running (not
        those of a server still running); how many."""


@dataclass(eq=False, kw_only=True)
class LocalInstance(Instance):
    port: int
    proc: subprocess.Popen
    log_path: Path
    lifeline: int  # the write end of the pipe whose closing tells the instance its server is gone; -1 once closed
    record: Path  # who the process is, so a later server can stop it if this one dies without doing so


def instance_command(dep: Deployment, port: int, host: str = "127.0.0.1", python: str = sys.executable) -> list[str]:
    """What an instance runs: the model server, or forgeflow.flows.serve for a flow; either takes any body the
    gateway may forward (an endpoint's own limit can be raised without restarting its instances), and a model server
    queues as many requests as the gateway may send it. An instance that reserved GPUs on its node runs its model
    on them; one serving several fine-tunes loads their base once, with one `--adapter` each."""
    if dep.serves_flow:
        program = ["forgeflow.flows.serve", "--flow", dep.model_path]
    else:
        program = ["forgeflow.inference.model_server", "--model-dir", dep.model_path, "--runtime", dep.runtime,
                   "--max-queue", str(MAX_PENDING_PER_INSTANCE)]
        if dep.gguf_type:
            program += ["--gguf-type", dep.gguf_type]
        for ref, adapter in dep.adapters.items():  # the model folder is then their base model's
            program += ["--adapter", f"{ref}={adapter}"]
        if dep.resources.get("gpus"):
            program += ["--device", "cuda"]
    return [python, "-m", *program, "--host", host, "--port", str(port), "--name", dep.name,
            "--max-body-bytes", str(SCORING_MAX_BYTES)]


def instance_env(secret: str, lifeline_fd: int) -> dict[str, str]:
    """An instance's environment: this process's (an operator's OMP_WAIT_POLICY or GOMP_SPINCOUNT for llama.cpp's
    OpenMP threads included: OpenMP's own adaptive waits are fastest on cores the instance has to itself, passive
    waits hold up when the cores are oversubscribed, bench/README.md), its secret and its lifeline."""
    return dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
                **{INSTANCE_SECRET_ENV: secret, LIFELINE_FD_ENV: str(lifeline_fd)})


class LocalPlacement:
    """Instances as processes on this machine, each on a free loopback port."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self._records = paths.root / "run" / "instances"
        self._lock = threading.Lock()

    def command(self, dep: Deployment, port: int) -> list[str]:
        return instance_command(dep, port)

    def start(self, dep: Deployment, indexes: Sequence[int]) -> list[Instance]:
        return [self._spawn(dep, index) for index in indexes]

    def _spawn(self, dep: Deployment, index: int) -> LocalInstance:
        log_path = self._log_dir(dep.endpoint) / f"{dep.name}-{index}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        port = free_port()
        argv = self.command(dep, port)
        secret = new_key()
        read_end, lifeline = os.pipe()  # both ends close-on-exec: only this instance inherits the read end
        env = instance_env(secret, read_end)
        try:
            with open(log_path, "ab") as logf:
                proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, pass_fds=(read_end,))
        except BaseException:
            os.close(lifeline)
            raise
        finally:
            os.close(read_end)
        record = self._records / f"{proc.pid}.json"
        try:
            write_private(record, json.dumps({"pid": proc.pid, "start_time": start_time(proc.pid), "argv": argv,
                                              "owner_pid": os.getpid(), "owner_start_time": start_time(os.getpid()),
                                              "endpoint": dep.endpoint, "deployment": dep.name,
                                              "index": index}).encode())
        except OSError as e:  # the lifeline still ends the instance with this server
            log.warning("cannot record instance pid %d in %s: %s", proc.pid, record, e)
        log.info("deployment %s/%s instance %d starting on port %d (pid %d)", dep.endpoint, dep.name, index, port,
                 proc.pid)
        return LocalInstance(index=index, url=f"http://127.0.0.1:{port}", secret=secret, port=port, proc=proc,
                             log_path=log_path, lifeline=lifeline, record=record)

    def stop(self, instances: Sequence[LocalInstance], *, grace_s: float = 10.0) -> None:
        threads = [threading.Thread(target=self._stop_one, args=(i, grace_s)) for i in instances]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _stop_one(self, inst: LocalInstance, grace_s: float) -> None:
        terminate(inst.proc, grace_s)
        with self._lock:  # an instance may be stopped twice (a rollback racing a delete): close its fd once
            lifeline, inst.lifeline = inst.lifeline, -1
        if lifeline >= 0:
            os.close(lifeline)
            inst.record.unlink(missing_ok=True)

    def stop_leftovers(self, grace_s: float = 5.0) -> int:
        """Stop every instance whose record outlived the server that started it (killed before it could stop
        them). The instances of a server that still runs (another server on the same workspace, or this one)
        are left alone, records included; a process is stopped only while its pid, start time and arguments
        still match its record, so a reused pid is never signalled."""
        leftovers: list[tuple[int, dict, Path]] = []
        for path in sorted(self._records.glob("*.json")):
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                rec = {}
            if _owner_runs(rec):
                continue
            if _is_recorded(rec):
                leftovers.append((rec["pid"], rec, path))
                log.warning("stopping instance %s/%s %s (pid %d) left running by a server that is gone (pid %s)",
                            rec.get("endpoint"), rec.get("deployment"), rec.get("index"), rec["pid"],
                            rec.get("owner_pid"))
            else:
                path.unlink(missing_ok=True)
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            for pid, rec, _ in leftovers:
                if _is_recorded(rec):
                    try:
                        os.kill(pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + wait_s
            while any(_is_recorded(rec) for _, rec, _ in leftovers) and time.monotonic() < deadline:
                time.sleep(0.05)
        for _, _, path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers)

    def ended(self, inst: LocalInstance) -> str | None:
        code = inst.proc.poll()
        return None if code is None else f"exited with code {code}"

    def describe(self, inst: LocalInstance) -> dict:
        return {"url": inst.url, "port": inst.port, "pid": inst.proc.pid}

    def log_tail(self, inst: LocalInstance) -> str:
        return log_tail(inst.log_path)

    def logs(self, endpoint: str, name: str, lines: int) -> str:
        out = []
        for path in sorted(self._log_dir(endpoint).glob(f"{name}-*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"==> {path.name} <==\n" + "\n".join(text))
        return "\n".join(out)

    def forget(self, endpoint: str, name: str) -> None:
        for path in self._log_dir(endpoint).glob(f"{name}-*.log"):
            path.unlink(missing_ok=True)

    def _log_dir(self, endpoint: str) -> Path:
        return self.paths.logs / "deployments" / endpoint


class TargetPlacement:
    """Each deployment on the placement of its compute target: `local` on this machine, any other target on
    what `remote` builds for its row (one per target, built when a deployment first uses it)."""

    def __init__(self, local: Placement, targets: Callable[[str], dict],
                 remote: Callable[[dict], Placement]) -> None:
        self.local = local
        self._targets = targets
        self._remote = remote
        self._placements: dict[tuple, Placement] = {}
        self._owner: weakref.WeakKeyDictionary[Instance, Placement] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def _for(self, dep: Deployment) -> Placement:
        if dep.compute == LOCAL_COMPUTE:
            return self.local
        target = self._targets(dep.compute)
        if target["type"] == "local":  # another name for this machine
            return self.local
        key = (target["name"], target["address"], target.get("size"))
        with self._lock:
            placement = self._placements.get(key)
            if placement is None:
                placement = self._placements[key] = self._remote(target)
        return placement

    def start(self, dep: Deployment, indexes: Sequence[int]) -> list[Instance]:
        placement = self._for(dep)
        instances = placement.start(dep, indexes)
        with self._lock:
            for inst in instances:
                self._owner[inst] = placement
        return instances

    def _of(self, inst: Instance) -> Placement:
        return self._owner.get(inst, self.local)

    def stop(self, instances: Sequence[Instance], *, grace_s: float = 10.0) -> None:
        groups: dict[Placement, list[Instance]] = {}
        for inst in instances:
            groups.setdefault(self._of(inst), []).append(inst)
        threads = [threading.Thread(target=p.stop, args=(group,), kwargs={"grace_s": grace_s})
                   for p, group in groups.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def ended(self, inst: Instance) -> str | None:
        return self._of(inst).ended(inst)

    def describe(self, inst: Instance) -> dict:
        return self._of(inst).describe(inst)

    def log_tail(self, inst: Instance) -> str:
        return self._of(inst).log_tail(inst)

    def logs(self, endpoint: str, name: str, lines: int) -> str:
        with self._lock:
            placements = [self.local, *self._placements.values()]
        return "\n".join(text for p in placements if (text := p.logs(endpoint, name, lines)))

    def forget(self, endpoint: str, name: str) -> None:
        with self._lock:
            placements = [self.local, *self._placements.values()]
        for p in placements:
            p.forget(endpoint, name)

    def stop_leftovers(self) -> int:
        """Only this machine can hold leftovers: a cluster's instances end with the server that placed them."""
        return self.local.stop_leftovers()


def _is_recorded(rec: dict) -> bool:
    """The recorded process still runs: same pid, same start time, same arguments (where /proc tells)."""
    pid, started = rec.get("pid"), rec.get("start_time")
    if not isinstance(pid, int) or started is None or not pid_alive(pid):
        return False
    return start_time(pid) == started and cmdline(pid) == rec.get("argv")


def _owner_runs(rec: dict) -> bool:
    """The server that started the instance still runs: same pid, same start time. A record without an owner
    (written before owners were recorded) has none that runs."""
    pid, started = rec.get("owner_pid"), rec.get("owner_start_time")
    return isinstance(pid, int) and started is not None and pid_alive(pid) and start_time(pid) == started


def terminate(proc: subprocess.Popen, grace_s: float) -> None:
    """Ask a process to exit (SIGTERM), and kill it after grace_s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
