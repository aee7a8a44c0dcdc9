"""The deployment supervisor: runs each deployment's model-server processes on loopback, probes
them (liveness: the process answers HTTP; readiness: `/health` is 200), restarts one that dies or
hangs, rolls instances on an update without dropping requests, and brings every deployment back
from the store when the server starts.

Each instance has a prober thread. Before a deployment first succeeds, an instance that exits is
a broken deployment (Failed); after that, it is replaced. A rolling update starts a new instance,
waits until it is ready, adds it to the pool, then drains an old one (no new requests, waits
for its in-flight ones) and stops it, one at a time.
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
from forgeflow.serving import specs
from forgeflow.store.db import Store
from forgeflow.store.home import Paths

log = logging.getLogger("forgeflow.deployments")

READY_TIMEOUT_S = float(os.environ.get("FORGEFLOW_READY_TIMEOUT_S", "600"))
Key = tuple[str, str]


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
    ever_ready: bool = False
    retired: bool = False  # drained or replaced: its prober stops and nothing restarts it

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
        self.on_restart = lambda endpoint, name: None  # the metrics hook
        self._instances: dict[Key, list[Instance]] = {}
        self._specs: dict[Key, dict] = {}
        self._generation: dict[Key, int] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        for dep in self.store.select("deployments"):
            if dep["state"] != "Deleting":
                self.launch(dep)

    def shutdown(self) -> None:
        self._stop.set()
        with self._lock:
            keys = list(self._instances)
        for key in keys:
            self.stop(*key)

    # -- per deployment ----------------------------------------------------------
    def launch(self, dep: dict) -> None:
        """Start a deployment's instances from scratch (create, or server start)."""
        key = (dep["endpoint"], dep["name"])
        self.stop(*key)
        self.store.update("deployments", {"endpoint": key[0], "name": key[1]}, {"state": "Creating", "error": None})
        with self._lock:
            gen = self._bump(key)
            self._specs[key] = dep
            instances = [self._spawn(dep, i) for i in range(int(dep["instance_count"]))]
            self._instances[key] = instances
        for inst in instances:
            self._watch(key, inst)
        threading.Thread(target=self._await_created, args=(key, gen), daemon=True).start()

    def update(self, old: dict, new: dict) -> None:
        """Apply a changed spec: settings at once; a new model or runtime rolls every instance;
        a new instance_count adds or drains instances."""
        key = (new["endpoint"], new["name"])
        with self._lock:
            self._specs[key] = new
            gen = self._generation.get(key, 0)
        roll = any(old.get(f) != new.get(f) for f in ("model_path", "model_ref", "runtime"))
        if not roll and old["instance_count"] == new["instance_count"]:
            self._set_state(key, "Succeeded", None)
            return
        threading.Thread(target=self._roll, args=(key, gen, old, new, roll), daemon=True,
                         name=f"forgeflow-roll-{key[0]}-{key[1]}").start()

    def stop(self, endpoint: str, name: str) -> None:
        with self._lock:
            key = (endpoint, name)
            self._bump(key)
            instances = self._instances.pop(key, [])
            self._specs.pop(key, None)
            for inst in instances:
                inst.retired, inst.ready = True, False
        threads = [threading.Thread(target=_terminate, args=(i.proc,)) for i in instances]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def ready_instances(self, endpoint: str, name: str) -> list[Instance]:
        with self._lock:
            return [i for i in self._instances.get((endpoint, name), [])
                    if i.ready and not i.retired and i.proc.poll() is None]

    def instances(self, endpoint: str, name: str) -> list[Instance]:
        with self._lock:
            return list(self._instances.get((endpoint, name), []))

    def ready_counts(self) -> dict[Key, int]:
        with self._lock:
            keys = list(self._instances)
        return {k: len(self.ready_instances(*k)) for k in keys}

    def mark_unready(self, inst: Instance) -> None:
        """The gateway could not connect: route around it until a probe says otherwise."""
        inst.ready = False

    def log_paths(self, endpoint: str, name: str) -> list[Path]:
        d = self.paths.logs / "deployments" / endpoint
        return sorted(d.glob(f"{name}-*.log"))

    # -- internals -----------------------------------------------------------------
    def _spawn(self, dep: dict, index: int, restarts: int = 0) -> Instance:
        log_path = self.paths.logs / "deployments" / dep["endpoint"] / f"{dep['name']}-{index}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        port = free_port()
        logf = open(log_path, "ab")
        if dep.get("runtime") == "flow":
            cmd = ["forgeflow.flows.serve", "--flow", dep["model_path"], "--port", str(port), "--name", dep["name"]]
        else:
            cmd = ["forgeflow.inference.model_server", "--model-dir", dep["model_path"], "--port", str(port),
                   "--name", dep["name"], "--runtime", dep.get("runtime") or "transformers"]
        proc = subprocess.Popen(
            [sys.executable, "-m", *cmd],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false"),
        )
        logf.close()
        log.info("deployment %s/%s instance %d starting on port %d (pid %d)", dep["endpoint"], dep["name"], index, port, proc.pid)
        return Instance(index=index, port=port, proc=proc, log_path=log_path, restarts=restarts)

    def _bump(self, key: Key) -> int:
        self._generation[key] = self._generation.get(key, 0) + 1
        return self._generation[key]

    def _current(self, key: Key, gen: int) -> bool:
        with self._lock:
            return self._generation.get(key) == gen and not self._stop.is_set()

    def _set_state(self, key: Key, state: str, error: str | None) -> None:
        self.store.update("deployments", {"endpoint": key[0], "name": key[1]}, {"state": state, "error": error})

    def _probes(self, key: Key) -> tuple[dict, dict]:
        with self._lock:
            dep = self._specs.get(key) or {}
        return (specs.probe("liveness_probe", None, dep.get("liveness_probe")),
                specs.probe("readiness_probe", None, dep.get("readiness_probe")))

    def _watch(self, key: Key, inst: Instance) -> None:
        threading.Thread(target=self._probe_loop, args=(key, inst), daemon=True,
                         name=f"forgeflow-probe-{key[0]}-{key[1]}-{inst.index}").start()

    def _probe_loop(self, key: Key, inst: Instance) -> None:
        live, ready = self._probes(key)
        start = time.monotonic()
        next_live, next_ready = start + live["initial_delay"], start + ready["initial_delay"]
        live_fail = ready_fail = ready_ok = 0
        while not inst.retired and not self._stop.is_set():
            if inst.proc.poll() is not None:
                inst.ready = False
                self._lost(key, inst, f"exited with code {inst.proc.returncode}")
                return
            live, ready = self._probes(key)
            now = time.monotonic()
            if now >= next_ready:
                code = _health(inst, ready["timeout"])
                if code == 200:
                    ready_fail, ready_ok = 0, ready_ok + 1
                    if ready_ok >= ready["success_threshold"]:
                        inst.ready = inst.ever_ready = True
                else:
                    ready_ok, ready_fail = 0, ready_fail + 1
                    if ready_fail >= ready["failure_threshold"]:
                        inst.ready = False
                if code is not None:
                    live_fail = 0
                next_ready = time.monotonic() + ready["period"]
            if now >= next_live:
                if _health(inst, live["timeout"]) is None:
                    live_fail += 1
                    if live_fail >= live["failure_threshold"]:
                        inst.ready = False
                        self._lost(key, inst, f"failed {live_fail} liveness probes (hung)")
                        return
                else:
                    live_fail = 0
                next_live = time.monotonic() + live["period"]
            pause = min(next_live, next_ready) - time.monotonic()
            self._stop.wait(min(max(pause, 0.02), self.poll_s))

    def _lost(self, key: Key, inst: Instance, reason: str) -> None:
        """An instance died or hung: replace it, or fail a deployment that never came up."""
        with self._lock:
            pool = self._instances.get(key)
            if inst.retired or pool is None or inst not in pool:
                return
            inst.retired = True
            dep = self.store.get("deployments", endpoint=key[0], name=key[1])
            creating = dep is not None and dep["state"] == "Creating" and not inst.ever_ready
        if dep is None:
            return
        if inst.proc.poll() is None:
            inst.proc.kill()  # hung (maybe stopped): SIGKILL works where SIGTERM would wait
            inst.proc.wait(timeout=10)
        if creating:
            self._fail(key, f"instance {inst.index} {reason}: {log_tail(inst.log_path)}")
            return
        log.warning("deployment %s/%s instance %d %s; restarting", key[0], key[1], inst.index, reason)
        if not inst.ever_ready:
            self._stop.wait(min(2.0 ** min(inst.restarts, 5), 30.0))  # a crash loop backs off
        with self._lock:
            pool = self._instances.get(key)
            if pool is None or inst not in pool:
                return
            fresh = self._spawn(self._specs.get(key, dep), inst.index, restarts=inst.restarts + 1)
            pool[pool.index(inst)] = fresh
        self.on_restart(*key)
        self._watch(key, fresh)

    def _await_created(self, key: Key, gen: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self._current(key, gen) and time.monotonic() < deadline:
            with self._lock:
                pool = list(self._instances.get(key, []))
            if pool and all(i.ready for i in pool):
                self._set_state(key, "Succeeded", None)
                return
            time.sleep(0.1)
        if self._current(key, gen):
            pending = [i for i in self.instances(*key) if not i.ready]
            self._fail(key, f"instance not ready after {READY_TIMEOUT_S:.0f} s: "
                            f"{log_tail(pending[0].log_path) if pending else ''}")

    def _await_instance(self, key: Key, gen: int, inst: Instance) -> str | None:
        """Wait for one new instance; None when ready, else why not."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self._current(key, gen):
                return "the deployment was changed or deleted meanwhile"
            if inst.ready:
                return None
            if inst.proc.poll() is not None or inst.retired:
                return f"new instance {inst.index} exited: {log_tail(inst.log_path)}"
            time.sleep(0.1)
        return f"new instance {inst.index} not ready after {READY_TIMEOUT_S:.0f} s"

    def _roll(self, key: Key, gen: int, old_spec: dict, new: dict, roll: bool) -> None:
        with self._lock:
            old = list(self._instances.get(key, []))
        target = int(new["instance_count"])
        to_retire = list(old) if roll else old[target:]
        if roll or target > len(old):
            first = 0 if roll else len(old)
            for index in range(first, target):
                with self._lock:
                    if not self._current(key, gen):
                        return
                    fresh = self._spawn(new, index)
                    self._instances[key].append(fresh)  # not ready yet: the gateway skips it
                self._watch(key, fresh)
                why = self._await_instance(key, gen, fresh)
                if why:
                    self._rollback(key, gen, old, old_spec, fresh, why)
                    return
                if roll and to_retire:
                    self._drain(key, to_retire.pop(0), new)
        for inst in to_retire:
            self._drain(key, inst, new)
        if self._current(key, gen):
            self._set_state(key, "Succeeded", None)

    def _rollback(self, key: Key, gen: int, old: list[Instance], old_spec: dict, failed: Instance, why: str) -> None:
        log.error("deployment %s/%s update failed: %s", key[0], key[1], why)
        with self._lock:
            pool = self._instances.get(key, [])
            new_ones = [i for i in pool if i not in old]
            for inst in new_ones:
                inst.retired, inst.ready = True, False
            if self._current(key, gen):
                self._instances[key] = [i for i in pool if i in old]
                self._specs[key] = old_spec
        for inst in new_ones:
            _terminate(inst.proc)
        if self._current(key, gen):
            keep = {k: old_spec[k] for k in ("model_ref", "model_path", "runtime", "instance_count")}
            self.store.update("deployments", {"endpoint": key[0], "name": key[1]},
                              keep | {"state": "Failed", "error": f"update failed and was rolled back: {why}"})

    def _drain(self, key: Key, inst: Instance, spec: dict) -> None:
        """Take an instance out of the pool, let its in-flight requests finish, then stop it."""
        with self._lock:
            pool = self._instances.get(key, [])
            if inst in pool:
                pool.remove(inst)
            inst.retired, inst.ready = True, False
        limit = time.monotonic() + spec["request_settings"].get("request_timeout_ms", 90_000) / 1000 + 1
        while inst.inflight > 0 and time.monotonic() < limit:
            time.sleep(0.05)
        _terminate(inst.proc)

    def _fail(self, key: Key, reason: str) -> None:
        log.error("deployment %s/%s failed: %s", key[0], key[1], reason)
        self.stop(*key)
        self._set_state(key, "Failed", reason)


def _health(inst: Instance, timeout: float) -> int | None:
    """The status /health answers, or None when the process does not answer in time."""
    try:
        return httpx.get(f"{inst.url}/health", timeout=timeout).status_code
    except httpx.HTTPError:
        return None


def _terminate(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
