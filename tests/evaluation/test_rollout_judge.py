"""A rollout whose condition names `judge`: answers of each side sampled at the gateway, scored by a judge flow
on the leader. With the shipped judge flow over a connection to another endpoint (a real OpenAI-compatible
judge), a green the judge rates as well as blue is promoted; with a judge flow that rates green's answers worse,
green is rolled back and its history names the judge's figures."""

from __future__ import annotations

import httpx

from forgeflow.store.connections import ConnectionStore
from serving.gateway_harness import gateway, post  # noqa: F401

JUDGE_FLOW = """\
inputs:
  question: {type: string}
  answer: {type: string}
outputs:
  score: {type: double, reference: "${grade.output}"}
nodes:
- name: grade
  type: python
  source: {type: code, path: grade.py}
  inputs: {answer: "${inputs.answer}"}
"""
GRADE = """\
from promptflow import tool


@tool
def grade(answer: str) -> float:
    return 0.0 if "wrong" in answer else 1.0
"""


def shop(gw, green_output: str) -> str:
    key = gw.endpoint("shop")
    gw.deploy("shop", "blue", {"output": "blue: the right answer"})
    gw.deploy("shop", "green", {"output": green_output})
    gw.svc.update_endpoint("shop", traffic={"blue": 100})
    gw.app.state.ff.rollout_controller.poll_s = 0.05
    return key


def run(gw, key: str, **body) -> dict:
    r = httpx.post(f"{gw.url}/api/endpoints/shop/rollouts", headers=gw.admin, timeout=30,
                   json={"deployment": "green", "canary": 50, "steps": [100], "min_requests": 4,
                         "judge_sample": 3} | body)
    assert r.status_code == 201, r.text
    for _ in range(400):
        post(gw, "shop", key)
        rollout = gw.app.state.ff.rollouts.latest("shop")
        if rollout["state"] != "Running":
            return rollout
    raise AssertionError(f"the rollout did not end: {rollout}")


def test_green_judged_as_good_as_blue_by_an_llm_judge_is_promoted(gateway):
    judge_key = gateway.endpoint("judges")
    gateway.deploy("judges", "rater", {"output": "5"})  # the judge model rates every answer 5 of 5
    gateway.svc.update_endpoint("judges", traffic={"rater": 100})
    ConnectionStore(gateway.ws).upsert("rollout-judge", "open_ai",
                                       {"base_url": f"{gateway.url}/endpoints/judges/v1"}, {"api_key": judge_key})
    key = shop(gateway, "green: the right answer")
    rollout = run(gateway, key, promote_if="error_rate<0.01 and judge>=blue", judge_connection="rollout-judge")
    assert rollout["state"] == "Promoted", rollout
    checks = [e for e in rollout["history"] if e["event"] == "check"]
    first = checks[0]["figures"]
    assert first["green"]["judge"] == 1.0 and first["blue"]["judge"] == 1.0
    assert 1 <= first["green"]["judged"] <= 3  # at most judge_sample answers of a side
    # at 100% blue answered nothing: its judge score is the one of the step before
    assert checks[-1]["figures"]["blue"]["judge"] == 1.0 and checks[-1]["figures"]["blue"]["from_earlier_window"]


def test_green_judged_worse_than_blue_is_rolled_back(gateway, tmp_path):
    flow = tmp_path / "strict-judge"
    flow.mkdir()
    (flow / "flow.dag.yaml").write_text(JUDGE_FLOW)
    (flow / "grade.py").write_text(GRADE)
    key = shop(gateway, "green: a wrong answer")
    rollout = run(gateway, key, promote_if="judge>=blue", judge_flow=str(flow))
    assert rollout["state"] == "RolledBack", rollout
    assert "judge>=blue failed with judge=0, blue.judge=1" in rollout["reason"]
    assert gateway.svc.show_endpoint("shop")["traffic"] == {"blue": 100}


def test_a_judge_flow_that_is_no_flow_is_a_400(gateway, tmp_path):
    key = shop(gateway, "green")
    del key
    r = httpx.post(f"{gateway.url}/api/endpoints/shop/rollouts", headers=gateway.admin, timeout=30,
                   json={"deployment": "green", "promote_if": "judge>=blue", "judge_flow": str(tmp_path)})
    assert r.status_code == 400 and r.json()["field"] == "judge_flow"
    r = httpx.post(f"{gateway.url}/api/endpoints/shop/rollouts", headers=gateway.admin, timeout=30,
                   json={"deployment": "green", "promote_if": "judge>=blue", "judge_connection": "nobody"})
    assert r.status_code == 400 and r.json()["field"] == "judge_connection"


def test_a_judge_failing_on_an_item_logs_its_place_never_its_text(tmp_path, caplog):
    from forgeflow.evaluation.judge import judge_answers

    (tmp_path / "flow.dag.yaml").write_text(JUDGE_FLOW)
    (tmp_path / "grade.py").write_text(GRADE.replace('return 0.0 if "wrong" in answer else 1.0',
                                                     'raise RuntimeError("cannot grade")'))
    items = [{"question": "my account number is 1234", "answer": "private answer", "reference": None}]
    with caplog.at_level("WARNING", logger="forgeflow.judge"):
        assert judge_answers(tmp_path, items) == [None]
    assert "judge flow failed on item 1" in caplog.text
    assert "1234" not in caplog.text and "private" not in caplog.text
