"""A real forgeflow app on loopback (uvicorn in a thread) whose deployments run the fake model
server, for gateway tests that need real HTTP: streaming, timeouts, signals, the openai client."""

from __future__ import annotations

import json
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from forgeflow.processes import free_port
from forgeflow.serving.endpoints import EndpointService
from forgeflow.serving.placement import LocalPlacement
from forgeflow.serving.records import Deployment
from forgeflow.store.workspace import Workspace
from waiting import wait_until  # noqa: F401  (the serving tests take it from here)

FAKE = Path(__file__).with_name("fake_model_server.py")
FAST_PROBES = {"initial_delay": 0.0, "period": 0.2, "timeout": 0.5, "failure_threshold": 2, "success_threshold": 1}
# Liveness waits a second: a fake server still binding its port on a loaded machine is starting, not hung.
FAST_LIVENESS = FAST_PROBES | {"initial_delay": 1.0}
SCORE = {"input_data": {"input_string": [{"role": "user", "content": "hi"}], "parameters": {"max_new_tokens": 4}}}
CHAT = {"model": "any", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


class FakePlacement(LocalPlacement):
    """Runs the fake model server; a deployment's model_path is the fake's JSON config."""

    def command(self, dep: Deployment, port: int) -> list[str]:
        return [sys.executable, "-S", str(FAKE), str(port), dep.name, dep.model_path]


@dataclass
class Gateway:
    url: str
    app: object
    ws: Workspace

    @property
    def svc(self) -> EndpointService:
        return self.app.state.ff.endpoints

    @property
    def admin(self) -> dict:
        return {"Authorization": f"Bearer {self.ws.admin_token()}"}

    def endpoint(self, name: str, **kw) -> str:
        """Create an endpoint; returns its primary key."""
        self.svc.create_endpoint(name, **kw)
        creds = self.svc.credentials(name)
        return creds.get("primary_key") or creds["access_token"]

    def deploy(self, endpoint: str, name: str, config: dict | None = None, *, wait: bool = True,
               instance_count: int = 1, request_settings: dict | None = None, probes: dict | None = None) -> dict:
        self.svc.create_deployment(endpoint, name, "fake:1", json.dumps(config or {}), instance_count=instance_count,
                                   request_settings=request_settings or {"max_concurrent_requests_per_instance": 64},
                                   liveness_probe=probes or FAST_LIVENESS,
                                   readiness_probe=probes or FAST_PROBES)
        return self.wait(endpoint, name) if wait else self.svc.show_deployment(endpoint, name)

    def wait(self, endpoint: str, name: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dep = self.svc.show_deployment(endpoint, name)
            if dep["provisioning_state"] in ("Succeeded", "Failed"):
                assert dep["provisioning_state"] == "Succeeded", dep
                return dep
            time.sleep(0.05)
        raise AssertionError(f"deployment {endpoint}/{name} did not settle: {dep}")


@contextmanager
def _serving(ws: Workspace):
    """A real app for the workspace on a free loopback port, served by uvicorn in a thread until the block ends."""
    from forgeflow.api.app import create_app

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = create_app(ws, base_url=url)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the test server did not start"
        time.sleep(0.02)
    try:
        yield Gateway(url=url, app=app, ws=ws)
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def gateway(monkeypatch):
    monkeypatch.setattr("forgeflow.api.app.LocalPlacement", FakePlacement)
    with _serving(Workspace.open()) as gw:
        yield gw


@pytest.fixture
def follower_gateway(gateway):
    """A second server on the gateway's workspace: `gateway` leads (it started first), this one follows."""
    with _serving(Workspace.open(gateway.ws.paths)) as gw:
        yield gw


def post(gw: Gateway, endpoint: str, key: str, body=None, *, path: str = "score", headers: dict | None = None,
         **kw) -> httpx.Response:
    h = {"Authorization": f"Bearer {key}"} | (headers or {})
    return httpx.post(f"{gw.url}/endpoints/{endpoint}/{path}", json=SCORE if body is None else body, headers=h,
                      **{"timeout": 30} | kw)


