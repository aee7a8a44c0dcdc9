"""The deployment supervisor: runs each deployment's model-server processes on loopback,
waits for them to be ready, restarts one that dies, and brings every deployment back from
the store when the server starts.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from forgeflow.processes import free_port, log_tail
from forgeflow.store.db import Store
from forgeflow.store.home import Paths

log = logging.getLogger("forgeflow.deployments")

READY_TIMEOUT_S = float(os.environ.get("FORGEFLOW_READY_TIMEOUT_S", "600"))


@dataclass
class Instance:
    index: int
    port: int
    proc: subprocess.Popen
    log_path: Path
    ready: bool = False
    inflight: int = 0
    restarts: int = 0
    started_at: float = field(default_factory=time.time)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def to_dict(self) -> dict:
        return {"index": self.index, "port": self.port, "pid": self.proc.pid, "ready": self.ready,
                "inflight": self.inflight, "restarts": self.restarts}


class DeploymentSupervisor:
    def __init__(self, store: Store, paths: Paths, *, poll_s: float = 1.0) -> None:
        self.store = store
        self.paths = paths
        self.poll_s = poll_s
        self._instances: dict[tuple[str, str], list[Instance]] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        for dep in self.store.select("deployments"):
            if dep["state"] != "Deleting":
                self.launch(dep)
        self._thread = threading.Thread(target=self._watch, name="forgeflow-deployments", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        with self._lock:
            keys = list(self._instances)
        for key in keys:
            self.stop(*key)

    # -- per deployment ----------------------------------------------------------
    def launch(self, dep: dict) -> None:
        key = (dep["endpoint"], dep["name"])
        self.stop(*key)
        self.store.update("deployments", {"endpoint": key[0], "name": key[1]}, {"state": "Creating", "error": None})
        instances = [self._spawn(dep, i) for i in range(int(dep["instance_count"]))]
        with self._lock:
            self._instances[key] = instances
        threading.Thread(target=self._await_ready, args=(key, instances), daemon=True).start()

    def stop(self, endpoint: str, name: str) -> None:
        with self._lock:
            instances = self._instances.pop((endpoint, name), [])
        for inst in instances:
            _terminate(inst.proc)

    def ready_instances(self, endpoint: str, name: str) -> list[Instance]:
        with self._lock:
            return [i for i in self._instances.get((endpoint, name), []) if i.ready and i.proc.poll() is None]

    def instances(self, endpoint: str, name: str) -> list[Instance]:
        with self._lock:
            return list(self._instances.get((endpoint, name), []))

    def log_paths(self, endpoint: str, name: str) -> list[Path]:
        d = self.paths.logs / "deployments" / endpoint
        return sorted(d.glob(f"{name}-*.log"))

    # -- internals -----------------------------------------------------------------
    def _spawn(self, dep: dict, index: int, restarts: int = 0) -> Instance:
        log_path = self.paths.logs / "deployments" / dep["endpoint"] / f"{dep['name']}-{index}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        port = free_port()
        logf = open(log_path, "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "forgeflow.serving.model_server", "--model-dir", dep["model_path"],
             "--port", str(port), "--name", dep["name"]],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false"),
        )
        logf.close()
        log.info("deployment %s/%s instance %d starting on port %d (pid %d)", dep["endpoint"], dep["name"], index, port, proc.pid)
        return Instance(index=index, port=port, proc=proc, log_path=log_path, restarts=restarts)

    def _await_ready(self, key: tuple[str, str], instances: list[Instance]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = list(instances)
        while pending and time.monotonic() < deadline and not self._stop.is_set():
            for inst in list(pending):
                if inst.proc.poll() is not None:
                    self._fail(key, f"instance {inst.index} exited with code {inst.proc.returncode}: {log_tail(inst.log_path)}")
                    return
                if _healthy(inst):
                    inst.ready = True
                    pending.remove(inst)
            time.sleep(0.3)
        with self._lock:
            current = self._instances.get(key)
        if current is not instances:
            return  # replaced or deleted meanwhile
        if pending:
            self._fail(key, f"instance not ready after {READY_TIMEOUT_S:.0f} s: {log_tail(pending[0].log_path)}")
        else:
            self.store.update("deployments", {"endpoint": key[0], "name": key[1]}, {"state": "Succeeded", "error": None})

    def _fail(self, key: tuple[str, str], reason: str) -> None:
        log.error("deployment %s/%s failed: %s", key[0], key[1], reason)
        self.stop(*key)
        self.store.update("deployments", {"endpoint": key[0], "name": key[1]}, {"state": "Failed", "error": reason})

    def _watch(self) -> None:
        """Replace an instance whose process died after it was ready."""
        while not self._stop.wait(self.poll_s):
            with self._lock:
                items = list(self._instances.items())
            for key, instances in items:
                for pos, inst in enumerate(instances):
                    if inst.ready and inst.proc.poll() is not None:
                        dep = self.store.get("deployments", endpoint=key[0], name=key[1])
                        if dep is None:
                            continue
                        log.warning("deployment %s/%s instance %d died (code %s); restarting",
                                    key[0], key[1], inst.index, inst.proc.returncode)
                        fresh = self._spawn(dep, inst.index, restarts=inst.restarts + 1)
                        instances[pos] = fresh
                        threading.Thread(target=self._await_one, args=(fresh,), daemon=True).start()

    def _await_one(self, inst: Instance) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and inst.proc.poll() is None and not self._stop.is_set():
            if _healthy(inst):
                inst.ready = True
                return
            time.sleep(0.3)


def _healthy(inst: Instance) -> bool:
    try:
        return httpx.get(f"{inst.url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _terminate(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
