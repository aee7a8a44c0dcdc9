"""Deployments on a Ray cluster: each instance is one Ray actor on a cluster node, and the actor runs the
instance program (the model server, or a flow's server: `placement.instance_command`) there as a subprocess,
bound to the node's address so the gateway reaches it over the network.

The server is a driver of the cluster (`raycluster.connect`). An instance's actor is named
`ff-<endpoint>-<deployment>-<index>-<nonce>` in the `forgeflow` namespace, reserves what the deployment's
`resources` ask for (CPUs, GPUs, memory), and, when the target names a `size`, runs only on nodes of that
node type (the `ray.io/node-group` label Ray's autoscaler gives the nodes it starts). A deployment's instances
are spread over the nodes. The instance's secret travels to its actor as a call argument and to the program
in its environment, never on a command line; the program holds a lifeline pipe from its actor and exits when
the actor dies (killed, or its node lost). The actors are owned by the server's driver and are not detached:
Ray ends them when that driver goes, however it goes (with `ray://`, after the client's reconnect grace), so a
starting server has no cluster leftovers to stop.

Placing takes time (Ray may first have to find room, or have its autoscaler start a node), so `start` returns
at once: each instance's url stays empty while a thread connects, creates its actor and waits until the actor
has launched the program on its node (it does not wait for the program to load its model: the supervisor's
probes do). An instance ends when its program exits or its actor dies; a callback on the actor's `wait` call
records it the moment Ray knows, so the supervisor replaces it and the gateway stops routing to it at once.

Every node runs the same forgeflow install as the server and reaches the model folder at the same path
(storage every node mounts). The program logs to its actor's stdout, the file Ray keeps for the actor on its
node (`ray logs actor --id ACTOR_ID`), which forgeflow reads through the actor.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import stat
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forgeflow import raycluster
from forgeflow.errors import Conflict, InvalidInput, ServerUnavailable
from forgeflow.processes import free_port
from forgeflow.serving.placement import Instance, instance_command, instance_env, terminate
from forgeflow.serving.records import Deployment, Key

log = logging.getLogger("forgeflow.deployments")

HISTORY = 32  # instances per deployment whose logs `logs` shows: the running ones and those that ended last
LAST_LINES = 100  # log lines an instance's actor hands back when its program ends
LOG_WAIT_S = 10.0  # how long `logs` waits for all the running instances' logs together
_RAY_MARKERS = (":job_id:", ":actor_name:", ":task_name:")  # lines Ray writes into an actor's log for itself


def check_target(target: dict) -> None:
    """Refuse, before a deployment is stored, a Ray target this server cannot place instances on."""
    address = target["address"]
    if address.startswith(("http://", "https://")):
        raise InvalidInput(f"compute target {target['name']!r} names its cluster by the dashboard URL {address}; "
                           "deployments need the cluster's GCS address (head:6379) or ray://head:10001: create a "
                           "target with that address", field="compute")
    driving = raycluster.driver_address()
    if driving not in (None, address):
        raise Conflict(f"this server places deployments on the Ray cluster at {driving}; compute target "
                       f"{target['name']!r} is the cluster at {address}, which needs a server of its own",
                       field="compute")
    if driving is None:
        try:
            raycluster.check_reachable(address)
        except ServerUnavailable as exc:
            raise ServerUnavailable(f"compute target {target['name']!r}: {exc.message}", field="compute") from None


@dataclass(eq=False, kw_only=True)
class RayInstance(Instance):
    key: Key
    actor_name: str
    wants: str  # what it reserves, for a message while it waits for a node
    actor: Any = None  # the actor's handle, once created
    where: dict[str, Any] = field(default_factory=dict)  # node_ip, node_id, actor_id, pid: once placed
    end: str | None = None  # how it ended
    last_log: str = ""  # the program's last lines, handed back by its actor when the program ended
    stopping: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class InstanceHost:
    """The actor on a cluster node that runs one instance's program, and stops it or reads its log on request.
    Ray runs its methods on threads (max_concurrency), so `wait` blocks without holding up the others."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.lifeline = -1  # the write end of the program's lifeline: closes when this actor's process dies

    def start(self, dep: Deployment, secret: str) -> dict[str, Any]:
        import ray

        ip = ray.util.get_node_ip_address()
        context = ray.get_runtime_context()
        where = {"node_ip": ip, "node_id": context.get_node_id(), "actor_id": context.get_actor_id(), "pid": None}
        for path in (dep.model_path, *dep.adapters.values()):  # a fine-tune's adapter travels like its base
            if not Path(path).exists():
                return where | {"error": f"{path} does not exist on node {ip}: a model or flow deployed to a "
                                         "cluster must be on storage every node mounts at the same path"}
        port = free_port(ip)
        argv = instance_command(dep, port, host=ip, python=sys.executable)
        read_end, self.lifeline = os.pipe()
        env = instance_env(secret, read_end)
        try:  # stdout and stderr: this actor's own, the log file Ray keeps for it
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env,
                                         pass_fds=(read_end,))
        finally:
            os.close(read_end)
        host = f"[{ip}]" if ":" in ip else ip
        return where | {"url": f"http://{host}:{port}", "pid": self.proc.pid}

    def wait(self) -> dict[str, Any]:
        """Returns when the program exits: its exit code and last log lines."""
        code = self.proc.wait()
        return {"code": code, "log": self.log(LAST_LINES)}

    def stop(self, grace_s: float) -> dict[str, Any]:
        terminate(self.proc, grace_s)
        return {"code": self.proc.returncode, "log": self.log(LAST_LINES)}

    def log(self, lines: int) -> str:
        """The last lines this actor's stdout file holds (the program's output), without Ray's own markers."""
        try:
            path = os.readlink("/proc/self/fd/1")
            if not stat.S_ISREG(os.stat(path).st_mode):  # a pipe or a terminal: nothing to read back
                raise OSError(f"stdout is {path}")
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4 * 1024 * 1024))
                text = f.read().decode(errors="replace")
        except OSError as exc:
            return f"(no log: this actor's stdout is not a file Ray keeps: {exc})"
        kept = [line for line in text.splitlines() if not line.startswith(_RAY_MARKERS)]
        return "\n".join(kept[-lines:])


@functools.cache
def _host_class():
    import ray

    return ray.remote(InstanceHost)


class RayPlacement:
    """Instances as Ray actors on the nodes of the cluster a compute target names."""

    def __init__(self, target: dict) -> None:
        self.target = target["name"]
        self.address = target["address"]
        self.size = target.get("size")
        self._history: dict[Key, deque[RayInstance]] = {}
        self._lock = threading.Lock()

    def start(self, dep: Deployment, indexes: Sequence[int]) -> list[Instance]:
        started = []
        for index in indexes:
            inst = RayInstance(index=index, url="", key=dep.key, wants=_wants(dep.resources),
                               actor_name=f"ff-{dep.endpoint}-{dep.name}-{index}-{secrets.token_hex(4)}")
            with self._lock:
                self._history.setdefault(dep.key, deque(maxlen=HISTORY)).append(inst)
            threading.Thread(target=self._place, args=(dep, inst), daemon=True,
                             name=f"forgeflow-place-{inst.actor_name}").start()
            started.append(inst)
        return started

    def _options(self, dep: Deployment, inst: RayInstance) -> dict[str, Any]:
        res = dep.resources
        options: dict[str, Any] = {"name": inst.actor_name, "namespace": raycluster.NAMESPACE,
                                   "num_cpus": res["cpus"], "num_gpus": res["gpus"], "max_restarts": 0,
                                   "max_concurrency": 4, "scheduling_strategy": "SPREAD"}
        if res["memory_mb"]:
            options["memory"] = res["memory_mb"] * 1024 * 1024
        if self.size:
            options["label_selector"] = {raycluster.NODE_TYPE_LABEL: self.size}
        return options

    def _place(self, dep: Deployment, inst: RayInstance) -> None:
        """Connect, create the actor, wait until it runs the program on a node (however long Ray takes to
        find one), then give the instance its url and watch for its end."""
        try:
            if raycluster.driver_address() != self.address:
                raycluster.check_reachable(self.address)  # fails fast where connecting would retry for minutes
            raycluster.connect(self.address)
            import ray

            with inst.lock:
                if inst.stopping:
                    return
                inst.actor = _host_class().options(**self._options(dep, inst)).remote()
            where = ray.get(inst.actor.start.remote(dep, inst.secret))
        except Exception as exc:  # ray raises its own errors and plain ones (a lost connection, a bad option)
            self._end(inst, f"could not be placed on the Ray cluster at {self.address}: {_first_line(exc)}")
            return
        inst.where = where
        if where.get("error"):
            self._end(inst, where["error"])
            return
        inst.actor.wait.remote().future().add_done_callback(functools.partial(self._exited, inst))
        inst.url = where["url"]
        log.info("deployment %s/%s instance %d starting on node %s at %s (actor %s)", inst.key[0], inst.key[1],
                 inst.index, where["node_ip"], inst.url, inst.actor_name)

    def _exited(self, inst: RayInstance, future) -> None:
        try:
            result = future.result()
        except Exception as exc:  # the actor died: killed, out of memory, or its node was lost
            self._end(inst, f"lost its Ray actor: {_death(exc)}")
        else:
            inst.last_log = inst.last_log or result["log"]
            self._end(inst, f"exited with code {result['code']} on node {inst.where.get('node_ip')}")

    def _end(self, inst: RayInstance, reason: str) -> None:
        with inst.lock:
            if inst.end is None:
                inst.end = reason

    def stop(self, instances: Sequence[Instance], *, grace_s: float = 10.0) -> None:
        threads = [threading.Thread(target=self._stop_one, args=(i, grace_s)) for i in instances]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _stop_one(self, inst: RayInstance, grace_s: float) -> None:
        with inst.lock:
            inst.stopping = True
            actor = inst.actor
        if actor is None:
            self._end(inst, "stopped before it was placed")
            return
        import ray

        if inst.where and not inst.end:  # its program runs: let it finish its requests and keep its last lines
            try:
                result = ray.get(actor.stop.remote(grace_s), timeout=grace_s + 10)
                inst.last_log = result["log"]
            except ray.exceptions.RayError:
                pass  # the actor is gone or does not answer: killing it ends the program through its lifeline
        self._end(inst, "stopped")
        try:
            ray.kill(actor)
        except ray.exceptions.RayError:
            pass

    def ended(self, inst: RayInstance) -> str | None:
        return inst.end

    def describe(self, inst: RayInstance) -> dict:
        state = inst.end or ("running" if inst.url else "placing" if inst.actor else "connecting")
        return {"url": inst.url or None, "compute": self.target, "state": state, "actor_name": inst.actor_name,
                **{k: inst.where.get(k) for k in ("actor_id", "node_id", "node_ip", "pid")}}

    def log_tail(self, inst: RayInstance) -> str:
        if not inst.actor and not inst.end:
            return f"connecting to the Ray cluster at {self.address}"
        if not inst.where and not inst.end:
            node = f"node of type {self.size!r}" if self.size else "node"
            return f"waiting for a {node} of the Ray cluster at {self.address} with {inst.wants} free"
        return " | ".join(line for line in self._log(inst, 6).splitlines() if line.strip())[-800:]

    def _log(self, inst: RayInstance, lines: int) -> str:
        """Its program's last lines: kept from when it ended, else read through its actor."""
        if inst.last_log or not inst.where:
            return "\n".join(inst.last_log.splitlines()[-lines:])
        if inst.end:  # its actor is gone: Ray keeps the log on the node
            return f"(its log stays on node {inst.where['node_ip']}: ray logs actor --id {inst.where['actor_id']})"
        import ray

        try:
            return ray.get(inst.actor.log.remote(lines), timeout=10)
        except ray.exceptions.RayError as exc:
            return f"(cannot read the log through actor {inst.actor_name}: {_first_line(exc)})"

    def logs(self, endpoint: str, name: str, lines: int) -> str:
        """Every kept instance's log, the running ones read through their actors together, all within
        LOG_WAIT_S however many there are or however slow their nodes."""
        with self._lock:
            history = list(self._history.get((endpoint, name), ()))
        live = {inst: inst.actor.log.remote(lines) for inst in history
                if inst.actor and inst.where and not inst.end and not inst.last_log}
        read: dict[RayInstance, str] = {}
        if live:
            import ray

            done, _ = ray.wait(list(live.values()), num_returns=len(live), timeout=LOG_WAIT_S)
            done_refs = set(done)
            for inst, ref in live.items():
                if ref not in done_refs:
                    read[inst] = f"(the log of actor {inst.actor_name} did not come within {LOG_WAIT_S:g} s)"
                    continue
                try:
                    read[inst] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    read[inst] = f"(cannot read the log through actor {inst.actor_name}: {_first_line(exc)})"
        out = []
        for inst in history:
            node = inst.where.get("node_ip") or "no node yet"
            status = f" ({inst.end})" if inst.end else ""
            text = read[inst] if inst in read else self._log(inst, lines)
            out.append(f"==> instance {inst.index}: actor {inst.actor_name} on {node}{status} <==\n" + text)
        return "\n".join(out)

    def forget(self, endpoint: str, name: str) -> None:
        """Drop the deployment's kept instances (and their actor handles); Ray keeps their logs on the nodes."""
        with self._lock:
            self._history.pop((endpoint, name), None)

    def stop_leftovers(self) -> int:
        """Nothing to stop: an instance's actor belongs to the driver of the server that placed it, and Ray
        ends a driver's actors (and so, through their lifelines, their programs) when the driver goes."""
        return 0


def _wants(resources: dict) -> str:
    """What an instance reserves, as a message says it: `cpus=1 gpus=1 memory_mb=4096`."""
    return " ".join(f"{k}={v}" for k, v in resources.items() if v or k == "cpus")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _death(exc: BaseException) -> str:
    """Why Ray says an actor died: its 'because' line, else its first."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return next((line for line in lines if "because" in line), lines[0] if lines else type(exc).__name__)
