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
async def app():
    """The app on the test's workspace, in-process; no runner thread (nothing starts)."""
    app = create_app(Workspace.open(), background=False)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def api(app):
    """A client of the app with the owner token."""
    token = app.state.ff.ws.admin_token()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                 headers={"Authorization": f"Bearer {token}"}) as client:
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


async def test_a_judge_flow_without_llm_nodes_needs_no_connection_and_refuses_one(api, body, tmp_path):
    from eval_fixtures import write_python_judge

    flow = write_python_judge(tmp_path / "python-judge")
    r = await api.post("/api/evaluations", json=body | {"metrics": ["judge"], "judge_flow": str(flow)})
    assert r.status_code == 201, r.text
    assert r.json()["hyperparameters"]["judge_connection"] is None
    await api.post(f"/api/jobs/{r.json()['id']}/cancel")
    r = await api.post("/api/connections", json={"name": "judge-llm", "type": "custom",
                                                 "configs": {"endpoint": "http://127.0.0.1:9"}, "secrets": {"key": "k"}})
    assert r.status_code == 201, r.text
    r = await api.post("/api/evaluations", json=body | {"metrics": ["judge"], "judge_flow": str(flow),
                                                         "judge_connection": "judge-llm"})
    assert r.status_code == 400 and r.json()["field"] == "judge_connection", r.json()
    assert "no llm node" in r.json()["message"]


async def test_the_default_judge_flow_uses_its_own_connection_when_none_is_named(api, body):
    answer = await refused(api, body | {"metrics": ["judge"]}, 400, "judge_connection", "forgeflow-judge")
    assert "pass judge_connection" in answer["message"]
    r = await api.post("/api/connections", json={"name": "forgeflow-judge", "type": "custom",
                                                 "configs": {"endpoint": "http://127.0.0.1:9"}, "secrets": {"key": "k"}})
    assert r.status_code == 201, r.text
    r = await api.post("/api/evaluations", json=body | {"metrics": ["judge"]})
    assert r.status_code == 201, r.text


async def test_a_judged_evaluation_on_a_ray_target_is_refused_naming_compute(api, body):
    from forgeflow.training.compute.targets import ComputeTarget, ComputeTargets

    ComputeTargets(Workspace.open().store).create(ComputeTarget(name="cluster", type="ray", address="127.0.0.1:6379"))
    await refused(api, body | {"metrics": ["f1", "judge"], "compute": "cluster"}, 400, "compute", "local")


async def test_max_new_tokens_must_leave_room_for_the_prompt(api, body, tiny_model_dir):
    context = json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"]
    answer = await refused(api, body | {"max_new_tokens": context}, 400, "max_new_tokens", str(context))
    assert "below" in answer["message"]
    r = await api.post("/api/evaluations", json=body | {"max_new_tokens": context, "metrics": ["loss"]})
    assert r.status_code == 201, r.text  # nothing is generated: the setting is not used


@pytest.mark.parametrize("field", ["data", "judge_flow", "model", "baseline"])
@pytest.mark.parametrize("path", ["bad\x00path", "x" * 5000, "/tmp/" + "y" * 300])
async def test_paths_no_filesystem_holds_are_a_400_naming_their_field(api, body, field, path):
    extra = {"metrics": ["judge"]} if field == "judge_flow" else {}
    await refused(api, body | extra | {field: path}, 400, field)


@pytest.mark.parametrize("field", ["training_data", "validation_data"])
@pytest.mark.parametrize("path", ["bad\x00path", "x" * 5000])
async def test_a_fine_tune_with_such_a_path_is_a_400_too(api, data, tiny_model_dir, field, path):
    job = {"model": str(tiny_model_dir), "training_data": str(data)} | {field: path}
    r = await api.post("/api/jobs", json=job)
    assert r.status_code == 400 and r.json()["field"] == field, r.json()
    r = await api.post("/api/jobs", json={"model": "m" * 5000, "training_data": str(data)})
    assert r.status_code == 400 and r.json()["field"] == "model", r.json()


async def test_only_the_rows_max_rows_uses_are_validated(api, body, tmp_path):
    data = tmp_path / "later-bad.jsonl"
    data.write_text(json.dumps(QA) + "\n" + json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    await refused(api, body | {"data": str(data)}, 400, "data", "line 2")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    await refused(api, body | {"data": str(empty)}, 400, "data", "no rows")
    r = await api.post("/api/evaluations", json=body | {"data": str(data), "max_rows": 1})
    assert r.status_code == 201, r.text


async def test_an_archived_version_can_be_evaluated(api, body, tiny_model_dir):
    r = await api.post("/api/models", json={"name": "tinyeval", "path": str(tiny_model_dir)})
    assert r.status_code == 201, r.text
    r = await api.post("/api/models/tinyeval/versions/1/archive")
    assert r.status_code == 200, r.text
    r = await api.post("/api/evaluations", json=body | {"model": "tinyeval:1", "baseline": "tinyeval:1"})
    assert r.status_code == 201, r.text
    assert r.json()["base_model"] == "tinyeval:1" and r.json()["validation_data"] == "tinyeval:1"
    r = await api.post("/api/jobs", json={"model": "tinyeval:1", "training_data": body["data"]})
    assert r.status_code == 409 and r.json()["field"] == "model"  # a fine-tune (a deployment's rule) still refuses


async def test_registering_a_fine_tune_survives_a_failure_to_carry_its_evaluation(app, api, data, tiny_model_dir):
    """The version exists once MLflow made it: an evaluation summary that cannot be read (its result.json is gone)
    is logged, never a failed registration. The fine-tune's link to its evaluation is a field of its own."""
    from forgeflow.store.states import JobStatus
    from forgeflow.training.hyperparams import resolve_hyperparameters
    from forgeflow.training.jobs import EvaluatedModel

    runner = app.state.ff.runner
    fine_tune = runner.submit(base_model="tiny", base_model_path=str(tiny_model_dir), training_data=str(data),
                              validation_data=str(data),
                              hyperparameters=resolve_hyperparameters({"evaluate_against_base": "true"}))
    evaluation = runner.submit_evaluation(model=EvaluatedModel(f"job:{fine_tune.id}", str(tiny_model_dir)),
                                          data=str(data), source_job=fine_tune.id)
    output = fine_tune.job_dir / "outputs" / "mlflow_model"
    output.mkdir(parents=True)
    (output / "MLmodel").write_text("flavors: {}\n")
    runner._write(evaluation.id, status=JobStatus.COMPLETED)  # but no result.json
    runner._write(fine_tune.id, status=JobStatus.COMPLETED, evaluation_job=evaluation.id,
                  metrics={"train_loss": 0.5})
    shown = (await api.get(f"/api/jobs/{fine_tune.id}")).json()
    assert shown["evaluation_job"] == evaluation.id and shown["metrics"] == {"train_loss": 0.5}
    r = await api.post("/api/models", json={"name": "carried", "from_job": fine_tune.id})
    assert r.status_code == 201, r.text
    assert r.json()["evaluation"] is None and r.json()["metrics"] == {"train_loss": 0.5}


@pytest.mark.parametrize("path", ["bad\x00path", "x" * 5000])
async def test_registering_or_adding_a_flow_from_such_a_path_is_a_400(api, path):
    r = await api.post("/api/models", json={"name": "hostile", "path": path})
    assert r.status_code == 400 and r.json()["field"] == "path", r.json()
    r = await api.post("/api/flows", json={"name": "hostile", "path": path})
    assert r.status_code == 400 and r.json()["field"] == "path", r.json()


@pytest.mark.parametrize("path", ["bad\x00path", "x" * 5000])
async def test_a_flow_deployment_from_such_a_path_is_a_400(api, path):
    assert (await api.post("/api/endpoints", json={"name": "hostile-flow"})).status_code == 201
    r = await api.post("/api/endpoints/hostile-flow/deployments", json={"name": "blue", "flow": path})
    assert r.status_code == 400 and r.json()["field"] == "flow", r.json()
