"""Numbers the REST API refuses: NaN and infinities (a JSON body may spell them NaN, Infinity or 1e999, and
Python's json reads them all) and values out of any sensible range. Each is a 400 that names the field, and
nothing is stored."""

import json
import textwrap

import pytest

from forgeflow.flows.catalog import EXAMPLES

pytestmark = pytest.mark.anyio


async def refused(api, method: str, url: str, body: str, field: str) -> None:
    """Send a raw JSON body (NaN and Infinity are not JSON a client library writes) and expect a 400 naming field."""
    r = await api.request(method, url, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, f"{body}: {r.status_code} {r.text}"
    error = r.json()
    assert error["field"] == field and field in error["message"], f"{body}: {error}"


@pytest.fixture
def stop_instances(app):
    """A created deployment starts its instances even without the background threads: stop them after the test."""
    yield
    app.state.ff.supervisor.shutdown()


async def test_deployment_probes_and_request_settings_refuse_nan_infinity_and_huge_values(api, ws, stop_instances):
    """issue 10, finding 5: `liveness_probe.period: NaN` was stored and silently disabled hang detection."""
    assert (await api.post("/api/endpoints", json={"name": "ep-numbers"})).status_code == 201
    deployments = "/api/endpoints/ep-numbers/deployments"
    flow = json.dumps(str(EXAMPLES / "chat-with-endpoint"))
    for setting, field in [
        ('"liveness_probe": {"period": NaN}', "liveness_probe.period"),
        ('"liveness_probe": {"timeout": NaN}', "liveness_probe.timeout"),
        ('"readiness_probe": {"initial_delay": NaN}', "readiness_probe.initial_delay"),
        ('"readiness_probe": {"timeout": Infinity}', "readiness_probe.timeout"),
        ('"liveness_probe": {"period": 1e999}', "liveness_probe.period"),
        ('"liveness_probe": {"failure_threshold": 100000000000000000000}', "liveness_probe.failure_threshold"),
        ('"request_settings": {"request_timeout_ms": 100000000000000000000}', "request_settings.request_timeout_ms"),
        ('"request_settings": {"max_concurrent_requests_per_instance": 9223372036854775807}',
         "request_settings.max_concurrent_requests_per_instance"),
    ]:
        await refused(api, "POST", deployments, f'{{"name": "blue", "flow": {flow}, {setting}}}', field)
    assert (await api.get(deployments)).json() == []

    # Integral probe thresholds still pass as the REST model reads them (floats), and updates are checked too.
    r = await api.post(deployments, json={"name": "blue", "flow": str(EXAMPLES / "chat-with-endpoint"),
                                          "liveness_probe": {"failure_threshold": 4, "period": 2}})
    assert r.status_code == 201, r.text
    ws.store.update("deployments", {"endpoint": "ep-numbers", "name": "blue"}, {"state": "Succeeded"})
    for change, field in [('"liveness_probe.period": NaN', "liveness_probe.period"),
                          ('"readiness_probe": {"timeout": -Infinity}', "readiness_probe.timeout")]:
        await refused(api, "PATCH", f"{deployments}/blue", f'{{"set": {{{change}}}}}', field)
    shown = (await api.get(f"{deployments}/blue")).json()
    assert shown["liveness_probe"]["period"] == 2.0 and shown["liveness_probe"]["failure_threshold"] == 4
    assert shown["readiness_probe"]["timeout"] == 5.0


async def test_endpoint_body_limit_refuses_a_value_past_its_range(api):
    """issue 10, finding 5: a 21-digit max_body_bytes overflowed the store and answered 500."""
    await refused(api, "POST", "/api/endpoints", '{"name": "ep-big", "max_body_bytes": 100000000000000000000}',
                  "max_body_bytes")
    assert (await api.get("/api/endpoints")).json() == []
    assert (await api.post("/api/endpoints", json={"name": "ep-big"})).status_code == 201
    await refused(api, "PATCH", "/api/endpoints/ep-big", '{"max_body_bytes": 100000000000000000000}', "max_body_bytes")
    assert (await api.get("/api/endpoints/ep-big")).json()["max_body_bytes"] is None


async def test_job_hyperparameters_refuse_nan_and_infinity(api, tmp_path, tiny_model_dir):
    """issue 10, finding 5: an infinite learning rate was queued, and the job list could no longer be sent."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                            for i in range(4)))
    base = f'"model": {json.dumps(str(tiny_model_dir))}, "training_data": {json.dumps(str(data))}'
    for setting, field in [('"learning_rate": Infinity', "learning_rate"), ('"max_grad_norm": NaN', "max_grad_norm"),
                           ('"weight_decay": 1e999', "weight_decay"), ('"early_stopping_threshold": Infinity',
                                                                       "early_stopping_threshold"),
                           ('"learning_rate": "inf"', "learning_rate"), ('"seed": 1099511627776', "seed")]:
        await refused(api, "POST", "/api/jobs", f'{{{base}, "hyperparameters": {{{setting}}}}}', field)
    r = await api.get("/api/jobs")
    assert r.status_code == 200 and r.json() == []


async def test_compute_targets_refuse_values_past_their_range(api):
    """issue 10, finding 5: a 20-digit max_concurrent_jobs overflowed the store and answered 500."""
    for body, field in [('{"name": "big", "max_concurrent_jobs": 100000000000000000000}', "max_concurrent_jobs"),
                        ('{"name": "big", "idle_time_before_scale_down": 9223372036854775808}',
                         "idle_time_before_scale_down"),
                        ('{"name": "big", "max_nodes": 1e999}', "max_nodes")]:
        await refused(api, "POST", "/api/compute", body, field)
    before = (await api.get("/api/compute/local")).json()
    await refused(api, "PATCH", "/api/compute/local", '{"max_concurrent_jobs": 100000000000000000000000000000}',
                  "max_concurrent_jobs")
    assert [t["name"] for t in (await api.get("/api/compute")).json()] == ["local"]
    assert (await api.get("/api/compute/local")).json() == before


async def test_connections_refuse_nan_and_infinity(api):
    """issue 10, finding 5: NaN and Infinity were stored as the strings 'nan' and 'inf'."""
    await refused(api, "POST", "/api/connections", '{"name": "conn", "configs": {"endpoint": NaN}}', "configs.endpoint")
    await refused(api, "POST", "/api/connections", '{"name": "conn", "secrets": {"key": 1e999}}', "secrets.key")
    assert (await api.get("/api/connections")).json() == []
    r = await api.post("/api/connections", json={"name": "conn", "configs": {"endpoint": "http://x", "n": 2.5},
                                                 "secrets": {"key": "k"}})
    assert r.status_code == 201, r.text
    await refused(api, "PATCH", "/api/connections/conn", '{"secrets": {"key": -Infinity}}', "secrets.key")
    await refused(api, "PUT", "/api/connections/conn", '{"name": "conn", "configs": {"n": NaN}}', "configs.n")
    shown = (await api.get("/api/connections/conn", params={"with_secrets": True})).json()
    assert shown["configs"] == {"endpoint": "http://x", "n": "2.5"} and shown["secrets"] == {"key": "k"}


async def test_dataset_prepare_refuses_a_seed_past_32_bits(api):
    """issue 10, finding 5: a 27-digit seed was accepted."""
    await refused(api, "POST", "/api/datasets/prepare", '{"prefix": "p", "seed": 100000000000000000000000000}', "seed")
    await refused(api, "POST", "/api/datasets/prepare", '{"prefix": "p", "test_size": Infinity}', "test_size")
    assert (await api.get("/api/datasets")).json() == []


async def test_flow_test_inputs_refuse_nan_and_infinity(api, tmp_path):
    """issue 10, finding 5: a NaN input reached the flow, and an output holding it could not be answered."""
    folder = tmp_path / "echo"
    folder.mkdir()
    (folder / "echo.py").write_text("from promptflow import tool\n\n@tool\ndef echo(x: float, o: dict) -> dict:\n"
                                    "    return {'x': x, 'o': o}\n")
    (folder / "flow.dag.yaml").write_text(textwrap.dedent("""\
        inputs:
          x: {type: double}
          o: {type: object, default: {}}
        outputs:
          out: {type: object, reference: "${echo.output}"}
        nodes:
        - {name: echo, type: python, source: {type: code, path: echo.py}, inputs: {x: "${inputs.x}", o: "${inputs.o}"}}
        """))
    assert (await api.post("/api/flows", json={"name": "echo", "path": str(folder)})).status_code == 201
    for inputs, field in [('{"x": NaN}', "inputs.x"), ('{"x": 1e999}', "inputs.x"),
                          ('{"x": 1, "o": {"a": [1, -Infinity]}}', "inputs.o.a[1]")]:
        await refused(api, "POST", "/api/flows/echo/test", f'{{"inputs": {inputs}}}', field)
    await refused(api, "POST", "/api/flows/echo/test", '{"inputs": {"x": 1}, "timeout_s": NaN}', "timeout_s")
    r = await api.post("/api/flows/echo/test", json={"inputs": {"x": 1.5, "o": {"a": [1]}}})
    assert r.status_code == 200 and r.json()["outputs"]["out"] == {"x": 1.5, "o": {"a": [1]}}
