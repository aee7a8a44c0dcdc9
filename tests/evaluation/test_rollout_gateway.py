"""Rollouts driven for real through the gateway: an endpoint with blue and green deployments (model-server
processes on loopback), traffic sent by the test through /score, and the leader's controller moving green's share.
A green whose instance answers errors goes back to the split from before with the error rate in its history; a
green that holds is promoted through 10, 50 and 100 percent; requests through another server of the database
count too (each server publishes its answer counts with its heartbeat)."""

from __future__ import annotations

import httpx

from serving.gateway_harness import follower_gateway, gateway, post  # noqa: F401

CONDITION = "error_rate<0.01 and p95_latency_ms<=blue+5000"  # room for a loaded machine


def start(gw, endpoint: str, **body) -> httpx.Response:
    return httpx.post(f"{gw.url}/api/endpoints/{endpoint}/rollouts", headers=gw.admin, timeout=30,
                      json={"deployment": "green", "promote_if": CONDITION} | body)


def current(gw, endpoint: str) -> dict:
    r = httpx.get(f"{gw.url}/api/endpoints/{endpoint}/rollouts/current", headers=gw.admin, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def drive(gw, endpoint: str, key: str, limit: int = 2000, via=None) -> dict:
    """Send scoring requests (through `via`, another server, when given) until the rollout ends; its final state."""
    for sent in range(limit):
        post(via or gw, endpoint, key)
        if sent % 5 == 4 and (rollout := current(gw, endpoint))["state"] != "Running":
            return rollout
    raise AssertionError(f"the rollout did not end after {limit} requests: {current(gw, endpoint)}")


def blue_and_green(gw, green: dict) -> str:
    key = gw.endpoint("shop")
    gw.deploy("shop", "blue", {"output": "blue says hi"})
    gw.deploy("shop", "green", green)
    gw.svc.update_endpoint("shop", traffic={"blue": 100})
    gw.app.state.ff.rollout_controller.poll_s = 0.05
    return key


def test_a_green_that_answers_errors_is_rolled_back_to_the_old_split(gateway):
    key = blue_and_green(gateway, {"fail": True})
    r = start(gateway, "shop", canary=10, steps=[10, 50, 100], min_requests=8)
    assert r.status_code == 201, r.text
    rollout = drive(gateway, "shop", key)
    assert rollout["state"] == "RolledBack", rollout
    assert gateway.svc.show_endpoint("shop")["traffic"] == {"blue": 100}
    events = [e["event"] for e in rollout["history"]]
    assert events[:2] == ["started", "step"] and events[-1] == "rolled_back"
    assert rollout["history"][1]["traffic"] == {"blue": 90, "green": 10}
    assert "error_rate<0.01 failed with error_rate=1" in rollout["reason"]
    assert rollout["history"][-1]["figures"]["green"]["errors"] >= 2
    # each traffic change is in the audit log
    audit = httpx.get(f"{gateway.url}/api/audit", headers=gateway.admin, timeout=30).json()
    changes = [row for row in audit if row["action"] == "rollout: traffic"]
    assert [row["detail"]["traffic"] for row in reversed(changes)] == [{"blue": 90, "green": 10}, {"blue": 100}]
    # the endpoint's own answer says how its last rollout ended
    shown = httpx.get(f"{gateway.url}/api/endpoints/shop", headers=gateway.admin, timeout=30).json()
    assert shown["rollout"]["state"] == "RolledBack" and shown["rollout"]["deployment"] == "green"


def test_a_green_that_holds_is_promoted_through_every_step(gateway):
    key = blue_and_green(gateway, {"output": "green says hi"})
    r = start(gateway, "shop", canary=10, steps=[10, 50, 100], min_requests=6)
    assert r.status_code == 201, r.text
    assert start(gateway, "shop", canary=10).status_code == 409  # one rollout at a time
    rollout = drive(gateway, "shop", key)
    assert rollout["state"] == "Promoted", rollout
    assert gateway.svc.show_endpoint("shop")["traffic"] == {"blue": 0, "green": 100}
    steps = [e for e in rollout["history"] if e["event"] == "step"]
    assert [e["percent"] for e in steps] == [10, 50, 100]
    assert [e["traffic"] for e in steps] == [{"blue": 90, "green": 10}, {"blue": 50, "green": 50},
                                             {"blue": 0, "green": 100}]
    checks = [e for e in rollout["history"] if e["event"] == "check"]
    assert len(checks) == 3 and all(c["passed"] for c in checks)
    for check in checks:
        assert check["figures"]["green"]["requests"] >= 6 and check["figures"]["green"]["errors"] == 0
    # at 100% blue had no requests: it is compared by its figures of the step before
    assert checks[-1]["figures"]["blue"]["from_earlier_window"] is True
    assert post(gateway, "shop", key).json()["output"] == "green says hi"


def test_requests_through_another_server_count_for_the_leaders_rollout(gateway, follower_gateway):
    key = blue_and_green(gateway, {"output": "green says hi"})
    assert start(gateway, "shop", canary=50, steps=[100], min_requests=5).status_code == 201
    rollout = drive(gateway, "shop", key, via=follower_gateway)  # every request through the follower
    assert rollout["state"] == "Promoted", rollout
    checks = [e for e in rollout["history"] if e["event"] == "check"]
    assert all(c["figures"]["green"]["requests"] >= 5 for c in checks)
    assert gateway.svc.metrics.outcomes() == []  # the leader's own gateway answered none of them
