"""A rollout's request checked at the edge (each wrong field a 400 or 409 naming it), a cancel through the CLI
that restores the split from before, and a rollout that outlives its server: the next server to lead resumes it
at the step its row holds."""

from __future__ import annotations

import httpx
import pytest
from typer.testing import CliRunner

from forgeflow.cli.main import app as cli
from forgeflow.store.workspace import Workspace
from serving.gateway_harness import FakePlacement, _serving, gateway, post  # noqa: F401
from waiting import wait_until

GOOD = {"deployment": "green", "promote_if": "error_rate<0.01 and p95_latency_ms<=blue", "min_requests": 1000}


def rollouts(gw) -> str:
    return f"{gw.url}/api/endpoints/shop/rollouts"


def two_deployments(gw) -> str:
    key = gw.endpoint("shop")
    gw.deploy("shop", "blue")
    gw.deploy("shop", "green")
    gw.svc.update_endpoint("shop", traffic={"blue": 100})
    gw.app.state.ff.rollout_controller.poll_s = 0.05
    return key


BAD = [
    ({"promote_if": "error_rate<0.01 and latency<5"}, 400, "promote_if", "unknown name 'latency'"),
    ({"promote_if": "p95_latency_ms<1.2*red"}, 400, "promote_if", "unknown name 'red'"),
    ({"promote_if": "error_rate<"}, 400, "promote_if", "not a condition"),
    ({"canary": 0}, 400, "canary", "from 1 to 99"),
    ({"canary": 100}, 400, "canary", "from 1 to 99"),
    ({"steps": [50, 20, 100]}, 400, "steps", "increase"),
    ({"steps": [10, 50]}, 400, "steps", "end at 100"),
    ({"canary": 20, "steps": [10, 100]}, 400, "steps", "below the canary"),
    ({"deployment": "purple"}, 400, "deployment", "no deployment 'purple'"),
    ({"min_requests": 0}, 400, "min_requests", "from 1"),
    ({"step_seconds": 60, "max_step_seconds": 30}, 400, "max_step_seconds", "longer than step_seconds"),
    ({"judge_connection": "judge-llm"}, 400, "judge_connection", "uses no judge"),
    ({"surprise": 1}, 400, "surprise", ""),
]


def test_a_bad_request_names_its_field(gateway):
    two_deployments(gateway)
    for change, status, field, says in BAD:
        r = httpx.post(rollouts(gateway), json=GOOD | change, headers=gateway.admin, timeout=30)
        assert r.status_code == status, (change, r.text)
        assert r.json()["field"] == field and says in r.json()["message"], (change, r.text)
    assert gateway.app.state.ff.rollouts.latest("shop") is None  # none of them started one


def test_one_rollout_at_a_time_and_none_on_an_endpoint_without_traffic(gateway):
    two_deployments(gateway)
    assert httpx.post(rollouts(gateway), json=GOOD, headers=gateway.admin, timeout=30).status_code == 201
    again = httpx.post(rollouts(gateway), json=GOOD, headers=gateway.admin, timeout=30)
    assert again.status_code == 409 and again.json()["field"] == "name"
    gateway.endpoint("idle")
    gateway.deploy("idle", "green")
    r = httpx.post(f"{gateway.url}/api/endpoints/idle/rollouts", json=GOOD, headers=gateway.admin, timeout=30)
    assert r.status_code == 409 and r.json()["field"] == "traffic"
    missing = httpx.get(f"{gateway.url}/api/endpoints/idle/rollouts/current", headers=gateway.admin, timeout=30)
    assert missing.status_code == 404


def test_cancel_restores_the_split_from_before(gateway, monkeypatch):
    monkeypatch.setenv("FORGEFLOW_URL", gateway.url)
    key = two_deployments(gateway)
    runner = CliRunner()
    res = runner.invoke(cli, ["online-endpoint", "rollout", "--name", "shop", "--deployment", "green", "--canary",
                              "20", "--step", "50,100", "--promote-if", GOOD["promote_if"], "--min-requests", "1000"])
    assert res.exit_code == 0, res.output
    wait_until(lambda: gateway.svc.show_endpoint("shop")["traffic"] == {"blue": 80, "green": 20}, what="the canary")
    for _ in range(6):
        assert post(gateway, "shop", key).status_code == 200
    by_hand = httpx.patch(f"{gateway.url}/api/endpoints/shop", json={"traffic": {"blue": 50, "green": 50}},
                          headers=gateway.admin, timeout=30)
    assert by_hand.status_code == 409 and by_hand.json()["field"] == "traffic"  # the rollout moves it, nobody else
    res = runner.invoke(cli, ["online-endpoint", "rollout", "status", "--name", "shop"])
    assert res.exit_code == 0 and "plan: 20% -> 50% -> 100% (step 1, 20%)" in res.output, res.output
    assert "this step so far" in res.output
    res = runner.invoke(cli, ["online-endpoint", "rollout", "cancel", "--name", "shop", "--json"])
    assert res.exit_code == 0, res.output
    assert '"state": "Canceled"' in res.output
    assert gateway.svc.show_endpoint("shop")["traffic"] == {"blue": 100}
    assert runner.invoke(cli, ["online-endpoint", "rollout", "cancel", "--name", "shop"]).exit_code == 1
    res = runner.invoke(cli, ["online-endpoint", "rollout", "--name", "shop", "--deployment", "green"])
    assert res.exit_code == 1 and "--promote-if is required" in res.output


@pytest.mark.integration
def test_a_rollout_resumes_on_the_next_server_at_its_step(monkeypatch):
    monkeypatch.setattr("forgeflow.api.app.LocalPlacement", FakePlacement)
    ws = Workspace.open()
    with _serving(ws) as first:
        two_deployments(first)
        r = httpx.post(rollouts(first), json=GOOD | {"canary": 10, "steps": [10, 100], "min_requests": 5,
                                                     "promote_if": "error_rate<0.01 and p95_latency_ms<=blue+5000"},
                       headers=first.admin, timeout=30)
        assert r.status_code == 201, r.text
        wait_until(lambda: first.svc.show_endpoint("shop")["traffic"] == {"blue": 90, "green": 10}, what="step 1")
    with _serving(Workspace.open(ws.paths)) as second:  # the first server is gone: this one leads
        second.app.state.ff.rollout_controller.poll_s = 0.05
        key = second.svc.credentials("shop")["primary_key"]
        wait_until(lambda: second.svc.show_deployment("shop", "green")["provisioning_state"] == "Succeeded",
                   what="green placed again")
        for _ in range(400):
            post(second, "shop", key)
            rollout = second.app.state.ff.rollouts.latest("shop")
            if rollout["state"] != "Running":
                break
        assert rollout["state"] == "Promoted", rollout["reason"]
        steps = [e["percent"] for e in rollout["history"] if e["event"] == "step"]
        assert steps == [10, 100]  # step 1 was not taken again
        assert second.svc.show_endpoint("shop")["traffic"] == {"blue": 0, "green": 100}


@pytest.mark.integration
def test_traffic_during_a_failover_does_not_roll_the_rollout_back(monkeypatch):
    """The next server sends green's share of the requests before green's instance is ready again: the gateway's
    own 503s are not green's errors, and the step's window starts again on the server that took it over."""
    monkeypatch.setattr("forgeflow.api.app.LocalPlacement", FakePlacement)
    ws = Workspace.open()
    condition = "error_rate<0.01 and p95_latency_ms<=blue+5000"
    with _serving(ws) as first:
        key = first.endpoint("shop")
        first.deploy("shop", "blue")
        first.deploy("shop", "green", {"load": 2})  # its /health says ready 2 s after each start
        first.svc.update_endpoint("shop", traffic={"blue": 100})
        first.app.state.ff.rollout_controller.poll_s = 0.05
        r = httpx.post(rollouts(first), json=GOOD | {"canary": 50, "steps": [100], "min_requests": 5,
                                                     "promote_if": condition}, headers=first.admin, timeout=30)
        assert r.status_code == 201, r.text
        wait_until(lambda: first.svc.show_endpoint("shop")["traffic"] == {"blue": 50, "green": 50}, what="step 1")
    with _serving(Workspace.open(ws.paths)) as second:
        second.app.state.ff.rollout_controller.poll_s = 0.05
        refused = 0
        for _ in range(400):  # at once, green not ready yet
            refused += post(second, "shop", key).status_code == 503
            rollout = second.app.state.ff.rollouts.latest("shop")
            if rollout["state"] != "Running":
                break
        assert refused, "no request came while green was placed again"
        assert rollout["state"] == "Promoted", rollout["reason"]
        assert "resumed" in [e["event"] for e in rollout["history"]]
