"""The placement seam: the endpoint service and the supervisor run a deployment on a placement that
is not processes (HTTP servers in this test's threads) and cannot tell the difference."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from gateway_harness import FAST_PROBES, wait_until

from forgeflow.serving.endpoints import EndpointService
from forgeflow.serving.placement import Instance
from forgeflow.serving.records import Deployment
from forgeflow.store.workspace import Workspace


class _Healthy(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        data = json.dumps({"status": "Healthy"}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class ThreadPlacement:
    """Each instance an HTTP server thread; `crash` makes one end as a dead process would."""

    def __init__(self) -> None:
        self.servers: dict[Instance, ThreadingHTTPServer] = {}
        self.crashed: set[Instance] = set()
        self.stopped: list[Instance] = []
        self.forgotten: list[tuple[str, str]] = []

    def start(self, dep: Deployment, indexes: Sequence[int]) -> list[Instance]:
        started = []
        for index in indexes:
            server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            inst = Instance(index=index, url=f"http://127.0.0.1:{server.server_port}")
            self.servers[inst] = server
            started.append(inst)
        return started

    def stop(self, instances: Sequence[Instance], *, grace_s: float = 10.0) -> None:
        for inst in instances:
            server = self.servers.pop(inst, None)
            if server:
                server.shutdown()
                server.server_close()
            self.stopped.append(inst)

    def ended(self, inst: Instance) -> str | None:
        return "crashed" if inst in self.crashed else None

    def describe(self, inst: Instance) -> dict:
        return {"thread": True}

    def log_tail(self, inst: Instance) -> str:
        return ""

    def logs(self, endpoint: str, name: str, lines: int) -> str:
        return f"{endpoint}/{name}: no logs"

    def forget(self, endpoint: str, name: str) -> None:
        self.forgotten.append((endpoint, name))

    def stop_leftovers(self) -> int:
        return 0  # threads die with the process that ran them



def test_a_deployment_runs_restarts_and_stops_on_another_placement():
    placement = ThreadPlacement()
    svc = EndpointService(Workspace.open(), placement, "http://x")
    try:
        svc.create_endpoint("seam-ep")
        svc.create_deployment("seam-ep", "blue", "fake:1", Path("unused"), instance_count=2,
                              liveness_probe=FAST_PROBES, readiness_probe=FAST_PROBES)
        dep = wait_until(lambda: (d := svc.show_deployment("seam-ep", "blue"))["provisioning_state"] == "Succeeded" and d)
        assert dep["instances"] == [
            {"index": n, "thread": True, "ready": True, "inflight": 0, "restarts": 0} for n in (0, 1)]
        assert len(svc.supervisor.ready_instances("seam-ep", "blue")) == 2

        victim = svc.supervisor.instances("seam-ep", "blue")[0]
        placement.crashed.add(victim)
        wait_until(lambda: [i for i in svc.show_deployment("seam-ep", "blue")["instances"]
                       if i["index"] == 0 and i["restarts"] == 1 and i["ready"]])
        assert victim in placement.stopped
        assert svc.metrics.value("forgeflow_instance_restarts_total",
                                 (("endpoint", "seam-ep"), ("deployment", "blue"))) == 1
        assert svc.deployment_logs("seam-ep", "blue") == "seam-ep/blue: no logs"

        svc.delete_endpoint("seam-ep")
        assert not placement.servers and svc.supervisor.instances("seam-ep", "blue") == []
        assert placement.forgotten == [("seam-ep", "blue")]
    finally:
        svc.shutdown()
