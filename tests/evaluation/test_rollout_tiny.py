"""Rollouts of real model servers: blue and green serve the tiny model, and the test's requests go through the
gateway. A green too slow for its request_timeout_ms (every answer a 408) is rolled back; once it is given time,
the same green is promoted through 10, 50 and 100 percent."""

from __future__ import annotations

import httpx
import pytest

from forgeflow.store.workspace import Workspace
from serving.gateway_harness import FAST_LIVENESS, FAST_PROBES, _serving, post

pytestmark = pytest.mark.integration
BODY = {"input_data": {"input_string": [{"role": "user", "content": "hi"}], "parameters": {"max_new_tokens": 2}}}


def deploy(gw, name: str, model_dir, timeout_ms: int) -> None:
    gw.svc.create_deployment("shop", name, "tiny-chat:1", str(model_dir),
                             request_settings={"request_timeout_ms": timeout_ms},
                             liveness_probe=FAST_LIVENESS | {"initial_delay": 5.0}, readiness_probe=FAST_PROBES)


def roll(gw, key: str) -> dict:
    r = httpx.post(f"{gw.url}/api/endpoints/shop/rollouts", headers=gw.admin, timeout=30, json={
        "deployment": "green", "canary": 10, "steps": [10, 50, 100], "min_requests": 3,
        "promote_if": "error_rate<0.01 and p95_latency_ms<=blue+30000"})
    assert r.status_code == 201, r.text
    for _ in range(500):
        post(gw, "shop", key, BODY)
        rollout = gw.app.state.ff.rollouts.latest("shop")
        if rollout["state"] != "Running":
            return rollout
    raise AssertionError(f"the rollout did not end: {rollout}")


def answers(gw) -> list[str]:
    """The gateway's answer counts by deployment and status, and the instances restarted, to say what a failing
    rollout saw."""
    return [line for line in gw.svc.metrics.render().splitlines()
            if line.startswith(("forgeflow_requests_total", "forgeflow_instance_restarts_total"))]


def test_a_slow_green_is_rolled_back_and_a_fixed_one_promoted(tiny_model_dir):
    with _serving(Workspace.open()) as gw:
        gw.app.state.ff.rollout_controller.poll_s = 0.05
        key = gw.endpoint("shop")
        deploy(gw, "blue", tiny_model_dir, 90_000)
        deploy(gw, "green", tiny_model_dir, 1)  # no answer comes within a millisecond: 408s
        gw.wait("shop", "blue", timeout=180)
        gw.wait("shop", "green", timeout=180)
        gw.svc.update_endpoint("shop", traffic={"blue": 100})

        rollout = roll(gw, key)
        assert rollout["state"] == "RolledBack", rollout
        assert "error_rate<0.01 failed with error_rate=1" in rollout["reason"]
        assert gw.svc.show_endpoint("shop")["traffic"] == {"blue": 100}

        gw.svc.update_deployment("shop", "green", {"request_settings.request_timeout_ms": 90_000})
        gw.wait("shop", "green", timeout=180)
        rollout = roll(gw, key)
        assert rollout["state"] == "Promoted", (rollout["reason"], rollout["history"], answers(gw))
        assert [e["percent"] for e in rollout["history"] if e["event"] == "step"] == [10, 50, 100]
        assert gw.svc.show_endpoint("shop")["traffic"] == {"blue": 0, "green": 100}
        answer = post(gw, "shop", key, BODY)
        assert answer.status_code == 200 and answer.headers["azureml-model-deployment"] == "green"
