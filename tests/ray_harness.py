"""A real multi-node Ray cluster on this machine, for the tests of forgeflow on Ray: every node a raylet of
its own, all on this host's address.

`ray.cluster_utils.Cluster` starts a head node (GCS, dashboard: job submission and the state API) with no CPUs of
its own, so nothing forgeflow asks for lands on it, and worker nodes (each its own raylet) with CPUs. Every node
carries a custom resource naming it (`node-1`, `node-2`, ...) so a test can tell where something ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
HEAD_TYPE = "ray.head.default"  # the head's node type: the fake provider names it so, as forgeflow's configs do
# Each node's dashboard agent on a port of its own: on Ray's fixed default (52365) only the first node of the
# machine binds it, and a head without its agent refuses job submissions ("No available agent").
_OWN_PORTS = {"dashboard_agent_listen_port": 0}


@dataclass
class LoopbackRay:
    cluster: object
    address: str  # the GCS address, what `ray start --address` takes and a forgeflow target's --address
    dashboard: str
    workers: dict[str, object] = field(default_factory=dict)  # node name -> ray node handle

    def add_worker(self, name: str, num_cpus: int = 2):
        node = self.cluster.add_node(num_cpus=num_cpus, resources={name: 1}, **_OWN_PORTS)
        self.cluster.wait_for_nodes()
        self.workers[name] = node
        return node

    def remove_worker(self, name: str) -> None:
        self.cluster.remove_node(self.workers.pop(name), allow_graceful=False)

    def shutdown(self) -> None:
        self.cluster.shutdown()


def start_loopback_ray(workers: int = 2, cpus_per_worker: int = 2) -> LoopbackRay:
    """Head (0 CPUs) plus `workers` worker nodes on this host; the caller shuts it down."""
    os.environ.update(RAY_ENV)
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_port": 0, **_OWN_PORTS})
    ray = LoopbackRay(cluster=cluster, address=cluster.address, dashboard="")
    for i in range(1, workers + 1):
        ray.add_worker(f"node-{i}", cpus_per_worker)
    ray.dashboard = _dashboard(cluster.address)
    return ray


def _dashboard(address: str, timeout_s: float = 60.0) -> str:
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return JobSubmissionClient(address).get_address()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@dataclass
class AutoscalingRay:
    """A head node run by Ray's own autoscaler with its fake multi-node provider: worker nodes are raylets the
    autoscaler starts on this machine when work waits for them and stops once they idle past the timeout."""

    temp_dir: str
    session: int  # the session id of every process of this cluster (`ray start` ran in a session of its own)
    address: str  # GCS address
    dashboard: str

    def processes(self) -> list[int]:
        """Every live process of this cluster, and no other: those of its session (zombies left to an init that
        does not reap are not running). Command lines do not tell: Ray's agents retitle themselves, overwriting
        their arguments and environment."""
        mine = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    with open(f"/proc/{entry}/stat") as f:
                        state, *fields = f.read().rsplit(") ", 1)[1].split()
                    if int(fields[2]) == self.session and state != "Z":  # ppid, pgrp, session
                        mine.append(int(entry))
        return mine

    def shutdown(self, grace_s: float = 10.0) -> None:
        """End this cluster's processes only (never `ray stop`, which ends every Ray cluster on the machine):
        asked to stop, then killed after `grace_s`; each pass takes in what a dying process started meanwhile."""
        sig, deadline = signal.SIGTERM, time.monotonic() + grace_s
        while pids := self.processes():
            if time.monotonic() > deadline:
                if sig == signal.SIGKILL:
                    break
                sig, deadline = signal.SIGKILL, time.monotonic() + grace_s
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_autoscaling_ray(node_types: dict, idle_timeout_minutes: float, max_workers: int,
                          cpus_per_worker: int = 1) -> AutoscalingRay:
    """Ray's autoscaler over its fake multi-node provider, with the given `available_node_types` (as forgeflow's
    cluster_config writes them: a head with no CPUs and worker types with min/max workers). Each worker type
    gets `cpus_per_worker` CPUs and an empty node_config (the fake provider launches raylets, not machines).
    Started like `ray.cluster_utils.AutoscalingCluster` does, but on a private temp dir and ports, so that
    stopping it ends this cluster's processes only; the caller calls `shutdown()`."""
    from forgeflow.processes import free_port

    types = {name: dict(t, node_config={}, resources=dict(t["resources"]) or {"CPU": cpus_per_worker})
             for name, t in node_types.items()}
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ffr", dir="/tmp")  # Unix socket paths under it must stay short
    host = _node_ip()
    config = {
        "cluster_name": "forgeflow-test", "max_workers": max_workers, "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        # The fake provider by module path: its defaults file (for type fake_multinode) is not in Ray's wheel.
        "provider": {"type": "external",
                     "module": "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider",
                     "gcs_address": f"{host}:{port}", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "available_node_types": types,
        "head_node_type": HEAD_TYPE,
        "docker": {}, "auth": {}, "file_mounts": {}, "cluster_synced_files": [], "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }
    config_file = os.path.join(temp_dir, "autoscaling.json")
    with open(config_file, "w") as f:
        json.dump(config, f)
    head_cpus = types[HEAD_TYPE]["resources"].get("CPU", 0)
    env = dict(os.environ, **RAY_ENV, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    cmd = [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head",
           f"--autoscaling-config={config_file}", f"--temp-dir={temp_dir}", f"--port={port}",
           f"--node-ip-address={host}", f"--num-cpus={head_cpus}", "--include-dashboard=true",
           "--dashboard-host=127.0.0.1", "--dashboard-port=0", f"--ray-client-server-port={free_port()}", "--dashboard-agent-listen-port=0", "--disable-usage-stats"]
    # A session of its own: every process the cluster starts (its nodes' too) carries the session id, so the
    # cluster can be ended without touching any other Ray cluster on the machine.
    starter = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    cluster = AutoscalingRay(temp_dir=temp_dir, session=starter.pid, address=f"{host}:{port}", dashboard="")
    try:
        output, _ = starter.communicate(timeout=120)
        if starter.returncode != 0:
            raise RuntimeError(f"ray start exited {starter.returncode}: {output}")
        cluster.dashboard = _dashboard(cluster.address)
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def _node_ip() -> str:
    """The address Ray gives this machine's nodes (the fake provider starts its raylets on it)."""
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()
