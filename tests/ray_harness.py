"""A real multi-node Ray cluster on this machine, for the tests of forgeflow on Ray: every node a raylet of
its own, all on this host's address.

`ray.cluster_utils.Cluster` starts a head node (GCS, dashboard: job submission and the state API) with no CPUs of
its own, so nothing forgeflow asks for lands on it, and worker nodes (each its own raylet) with CPUs. Every node
carries a custom resource naming it (`node-1`, `node-2`, ...) so a test can tell where something ran.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}


@dataclass
class LoopbackRay:
    cluster: object
    address: str  # the GCS address, what `ray start --address` takes and a forgeflow target's --address
    dashboard: str
    workers: dict[str, object] = field(default_factory=dict)  # node name -> ray node handle

    def add_worker(self, name: str, num_cpus: int = 2):
        node = self.cluster.add_node(num_cpus=num_cpus, resources={name: 1})
        self.cluster.wait_for_nodes()
        self.workers[name] = node
        return node

    def remove_worker(self, name: str) -> None:
        self.cluster.remove_node(self.workers.pop(name), allow_graceful=False)

    def shutdown(self) -> None:
        self.cluster.shutdown()


def start_loopback_ray(workers: int = 2, cpus_per_worker: int = 2) -> LoopbackRay:
    """Head (0 CPUs) plus `workers` worker nodes on 127.0.0.1; the caller shuts it down."""
    os.environ.update(RAY_ENV)
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_port": 0})
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
