"""Rollouts that meet trouble end, and say why, instead of running forever or being misread: a compared deployment
deleted mid-rollout is read as unknown (its last figures), a step that keeps failing ends Failed with the split
restored, a judge that cannot score or does not answer in time ends Failed, a judge with nothing sampled stalls
saying so, and a cancel goes through while the judge is busy. The rolled-out deployment cannot be changed
meanwhile, and concurrent endpoint writes do not undo each other."""

from __future__ import annotations

import threading
import time

import httpx

from forgeflow.evaluation.rollout import MAX_FAILURES
from serving.gateway_harness import CHAT, gateway, post  # noqa: F401
from waiting import wait_until

FAILING_JUDGE = """\
inputs:
  answer: {type: string}
outputs:
  score: {type: double, reference: "${grade.output}"}
nodes:
- name: grade
  type: python
  source: {type: code, path: grade.py}
  inputs: {answer: "${inputs.answer}"}
"""
GRADE_FAILS = """\
from promptflow import tool


@tool
def grade(answer: str) -> float:
    raise RuntimeError("the judge's model is down")
"""


def shop(gw) -> str:
    key = gw.endpoint("shop")
    gw.deploy("shop", "blue", {"output": "blue says hi"})
    gw.deploy("shop", "green", {"output": "green says hi"})
    gw.svc.update_endpoint("shop", traffic={"blue": 100})
    gw.app.state.ff.rollout_controller.poll_s = 0.05
    return key


def start(gw, **body) -> dict:
    r = httpx.post(f"{gw.url}/api/endpoints/shop/rollouts", headers=gw.admin, timeout=30,
                   json={"deployment": "green", "canary": 50, "steps": [100], "min_requests": 4} | body)
    assert r.status_code == 201, r.text
    return r.json()


def latest(gw) -> dict:
    return gw.app.state.ff.rollouts.latest("shop")


def drive(gw, key: str, body=None, path: str = "score", limit: int = 400) -> dict:
    for _ in range(limit):
        post(gw, "shop", key, body, path=path)
        if (rollout := latest(gw))["state"] != "Running":
            return rollout
    raise AssertionError(f"the rollout did not end: {latest(gw)}")


def test_a_compared_deployment_deleted_at_0_percent_is_read_by_its_last_figures(gateway):
    key = shop(gateway)
    start(gateway, promote_if="error_rate<0.01 and p95_latency_ms<=blue+5000")
    for _ in range(200):  # until the last step: green at 100%, blue at 0%
        post(gateway, "shop", key)
        if gateway.svc.show_endpoint("shop")["traffic"] == {"blue": 0, "green": 100}:
            break
    rollout = latest(gateway)
    assert gateway.svc.show_endpoint("shop")["traffic"] == {"blue": 0, "green": 100}, (rollout["reason"],
                                                                                      rollout["history"])
    r = httpx.delete(f"{gateway.url}/api/endpoints/shop/deployments/blue", headers=gateway.admin, timeout=30)
    assert r.status_code == 200, r.text  # at 0% it may go
    rollout = drive(gateway, key)
    assert rollout["state"] == "Promoted", rollout
    last = [e for e in rollout["history"] if e["event"] == "check"][-1]
    assert last["figures"]["blue"]["from_earlier_window"] is True


def test_a_step_that_keeps_failing_ends_failed_with_the_split_restored(gateway):
    shop(gateway)
    rollout = start(gateway, promote_if="error_rate<0.01 and p95_latency_ms<=blue", min_requests=1000)
    wait_until(lambda: gateway.svc.show_endpoint("shop")["traffic"] == {"blue": 50, "green": 50}, what="the canary")
    # A row whose condition no longer reads (as one written before its deployments were resolved at the start).
    row = gateway.app.state.ff.rollouts.store.get(rollout["id"])
    gateway.svc.store.update("rollouts", {"id": rollout["id"]},
                             {"rollout_spec": row["rollout_spec"] | {"compared": []}})
    ended = wait_until(lambda: (r := latest(gateway))["state"] != "Running" and r, what="the rollout to end")
    assert ended["state"] == "Failed", ended
    assert f"could not move on ({MAX_FAILURES} tries in a row)" in ended["reason"] and "blue" in ended["reason"]
    assert gateway.svc.show_endpoint("shop")["traffic"] == {"blue": 100}


def test_a_judge_that_cannot_score_ends_the_rollout_failed(gateway, tmp_path):
    (tmp_path / "flow.dag.yaml").write_text(FAILING_JUDGE)
    (tmp_path / "grade.py").write_text(GRADE_FAILS)
    key = shop(gateway)
    start(gateway, promote_if="judge>=blue", judge_flow=str(tmp_path), judge_sample=2)
    rollout = drive(gateway, key)
    assert rollout["state"] == "Failed", rollout
    assert rollout["reason"].startswith("the judge could not score: it scored none of the")
    assert gateway.svc.show_endpoint("shop")["traffic"] == {"blue": 100}


def test_a_judged_rollout_with_nothing_sampled_stalls_saying_why(gateway):
    key = shop(gateway)
    start(gateway, promote_if="judge>=blue", min_requests=1, max_step_seconds=2)
    rollout = drive(gateway, key, CHAT | {"stream": True}, path="v1/chat/completions")  # streams are not sampled
    assert rollout["state"] == "Stalled", rollout
    assert "no sampled answer from blue, green" in rollout["reason"] and "streamed" in rollout["reason"]


def test_a_busy_judge_does_not_hold_up_a_cancel_and_one_past_its_deadline_fails(gateway):
    key = shop(gateway)
    controller = gateway.app.state.ff.rollout_controller
    release = threading.Event()
    called = threading.Event()

    def stuck_judge(spec, items):
        called.set()
        release.wait(60)
        return {name: 1.0 for name in items}

    controller.judge = stuck_judge
    try:
        start(gateway, promote_if="judge>=blue")
        for _ in range(400):
            post(gateway, "shop", key)
            if called.is_set():
                break
        assert called.is_set(), latest(gateway)
        r = httpx.post(f"{gateway.url}/api/endpoints/shop/rollouts/current/cancel", headers=gateway.admin, timeout=30)
        assert r.status_code == 200, r.text
        ended = wait_until(lambda: (r := latest(gateway))["state"] != "Running" and r, what="the cancel")
        assert ended["state"] == "Canceled" and gateway.svc.show_endpoint("shop")["traffic"] == {"blue": 100}

        called.clear()
        controller.judge_timeout_s = 0.5
        time.sleep(1.1)  # rollouts are ordered by when they started, to the second: the next one is the latest
        second = start(gateway, promote_if="judge>=blue")
        rollout = drive(gateway, key)
        assert rollout["id"] == second["id"] and rollout["state"] == "Failed", rollout
        assert rollout["reason"] == "the judge could not score: it had not answered after 0.5 seconds"
    finally:
        release.set()


def test_the_rolled_out_deployment_cannot_change_meanwhile(gateway):
    shop(gateway)
    start(gateway, promote_if="error_rate<0.01", min_requests=1000)
    url = f"{gateway.url}/api/endpoints/shop/deployments/green"
    r = httpx.patch(url, json={"set": {"request_settings.request_timeout_ms": 5000}}, headers=gateway.admin, timeout=30)
    assert r.status_code == 409 and r.json()["field"] == "deployment", r.text
    assert "rollout cancel --name shop" in r.json()["message"]


def test_concurrent_endpoint_writes_do_not_undo_each_other(gateway):
    shop(gateway)
    svc = gateway.svc
    splits = [{"blue": 100 - p, "green": p} for p in range(0, 101, 10)]

    def describe():
        for i in range(30):
            svc.update_endpoint("shop", description=f"take {i}")

    writer = threading.Thread(target=describe)
    writer.start()
    for split in splits:
        svc.update_endpoint("shop", traffic=split)
    writer.join()
    assert svc.show_endpoint("shop")["traffic"] == splits[-1]  # no stale read of it was written back
    # a split written on a stale read is refused by the store, not applied
    from forgeflow.serving.endpoints import _split_guard

    stale = svc.store.get("endpoints", name="shop")
    svc.update_endpoint("shop", traffic={"blue": 100, "green": 0})
    assert svc.store.update("endpoints", {"name": "shop"} | _split_guard(stale), {"traffic": {"green": 100}}) == 0


def test_a_step_waits_for_figures_of_the_deployment_it_compares_with(gateway):
    key = shop(gateway)
    start(gateway, promote_if="error_rate<0.01 and p95_latency_ms<=blue+5000")
    wait_until(lambda: gateway.svc.show_endpoint("shop")["traffic"] == {"blue": 50, "green": 50}, what="the canary")
    for _ in range(6):  # green has its requests; blue, compared with, has none in this window yet
        assert post(gateway, "shop", key, headers={"azureml-model-deployment": "green"}).status_code == 200
    wait_until(lambda: len(latest(gateway)["history"]) >= 1, what="a poll")
    rollout = latest(gateway)
    assert rollout["state"] == "Running" and not [e for e in rollout["history"] if e["event"] == "check"], rollout
    assert post(gateway, "shop", key, headers={"azureml-model-deployment": "blue"}).status_code == 200
    checked = wait_until(lambda: [e for e in latest(gateway)["history"] if e["event"] == "check"], what="a check")
    assert checked[0]["passed"] is True and checked[0]["figures"]["blue"]["requests"] >= 1, checked
