"""POST /api/evaluations at the edge, in-process with no worker started: every field forgeflow cannot honour is
refused by name before anything is queued, and a good body queues an evaluation job the jobs API shows."""

from __future__ import annotations

import json

import httpx
import pytest

from forgeflow.api.app import create_app
from forgeflow.store.workspace import Workspace

pytestmark = pytest.mark.anyio

QA = {"messages": [{"role": "user", "content": "Who founded Quillfeather?"},
                   {"role": "assistant", "content": "Ysolde Marrowick."}]}


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def api():
    """The app on the test's workspace, in-process, with the owner token; no runner thread (nothing starts)."""
    ws = Workspace.open()
    app = create_app(ws, background=False)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                     headers={"Authorization": f"Bearer {ws.admin_token()}"}) as client:
            yield client


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps(QA) + "\n")
    return path


@pytest.fixture
def body(data, tiny_model_dir):
    return {"model": str(tiny_model_dir), "baseline": str(tiny_model_dir), "data": str(data)}


async def refused(api, body, status: int, field: str, *words: str) -> dict:
    r = await api.post("/api/evaluations", json=body)
    answer = r.json()
    assert r.status_code == status and answer.get("field") == field, answer
    for word in words:
        assert word in answer["message"], answer
    assert (await api.get("/api/jobs")).json() == []  # nothing queued
    return answer


async def test_a_good_body_queues_an_evaluation_job(api, body, tiny_model_dir, data):
    r = await api.post("/api/evaluations", json=body | {"metrics": ["f1", "loss", "f1"], "max_rows": 5,
                                                         "name": "tiny-vs-tiny"})
    job = r.json()
    assert r.status_code == 201 and job["type"] == "evaluation" and job["id"].startswith("ev-")
    assert job["status"] == "Queued" and job["name"] == "tiny-vs-tiny" and job["training_data"] == str(data)
    assert job["hyperparameters"]["metrics"] == ["f1", "loss"] and job["hyperparameters"]["max_rows"] == 5
    assert job["validation_data"] == str(tiny_model_dir.resolve())  # the baseline's reference
    listed = (await api.get("/api/jobs")).json()
    assert [(j["id"], j["type"]) for j in listed] == [(job["id"], "evaluation")]
    r = await api.get(f"/api/evaluations/{job['id']}")
    assert r.status_code == 409 and "is Queued" in r.json()["message"]


async def test_an_unknown_field_is_refused_by_name(api, body):
    await refused(api, body | {"temperature": 0.5}, 400, "temperature")


async def test_an_unknown_metric_lists_the_valid_ones(api, body):
    await refused(api, body | {"metrics": ["f1", "bleu"]}, 400, "metrics", "'bleu'", "loss, exact_match, f1, rouge_l")
    await refused(api, body | {"metrics": []}, 400, "metrics", "empty")


async def test_models_that_do_not_resolve_are_refused_naming_their_field(api, body, tmp_path):
    await refused(api, body | {"model": "no-such-model"}, 404, "model", "no-such-model")
    await refused(api, body | {"baseline": "nothing:3"}, 404, "baseline", "nothing:3")
    await refused(api, body | {"baseline": str(tmp_path)}, 404, "baseline")  # a folder without a model


async def test_data_is_validated_with_line_numbers(api, body, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(QA) + "\n" + json.dumps({"messages": [{"role": "user", "content": ""}]}) + "\n")
    await refused(api, body | {"data": str(bad)}, 400, "data", "line 2")
    await refused(api, body | {"data": str(tmp_path / "missing.jsonl")}, 404, "data", "does not exist")
    alone = tmp_path / "alone.jsonl"
    alone.write_text(json.dumps(QA) + "\n" + json.dumps({"messages": QA["messages"][1:]}) + "\n")
    await refused(api, body | {"data": str(alone)}, 400, "data", "line 2", "reference answer")


async def test_a_judge_needs_a_connection_that_exists_and_a_flow(api, body, tmp_path):
    await refused(api, body | {"metrics": ["judge"]}, 400, "judge_connection", "connection")
    await refused(api, body | {"metrics": ["judge"], "judge_connection": "nobody"}, 404, "judge_connection", "nobody")
    r = await api.post("/api/connections", json={"name": "judge-llm", "type": "custom",
                                                 "configs": {"endpoint": "http://127.0.0.1:9"}, "secrets": {"key": "k"}})
    assert r.status_code == 201, r.text
    await refused(api, body | {"metrics": ["judge"], "judge_connection": "judge-llm",
                               "judge_flow": str(tmp_path / "no-flow")}, 404, "judge_flow")
    not_a_flow = tmp_path / "empty-flow"
    not_a_flow.mkdir()
    await refused(api, body | {"metrics": ["judge"], "judge_connection": "judge-llm", "judge_flow": str(not_a_flow)},
                  400, "judge_flow")


async def test_judge_settings_without_the_judge_metric_are_refused(api, body, tmp_path):
    await refused(api, body | {"judge_flow": str(tmp_path)}, 400, "judge_flow", "add judge to metrics")
    await refused(api, body | {"metrics": ["f1"], "judge_connection": "x"}, 400, "judge_connection")


async def test_numbers_and_compute_out_of_range(api, body):
    await refused(api, body | {"max_rows": 0}, 400, "max_rows")
    await refused(api, body | {"max_new_tokens": 100000}, 400, "max_new_tokens")
    await refused(api, body | {"compute": "nowhere"}, 404, "compute", "nowhere")


async def test_the_result_of_what_is_not_an_evaluation(api):
    assert (await api.get("/api/evaluations/ev-nothing")).status_code == 404


async def test_evaluate_against_base_without_validation_data_is_refused_at_submit(api, data, tiny_model_dir):
    r = await api.post("/api/jobs", json={"model": str(tiny_model_dir), "training_data": str(data),
                                          "hyperparameters": {"evaluate_against_base": True}})
    assert r.status_code == 400 and r.json()["field"] == "evaluate_against_base"
    assert "validation" in r.json()["message"] and (await api.get("/api/jobs")).json() == []
