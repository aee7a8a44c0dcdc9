"""The REST control plane in-process: auth, validation and clear errors for bad input."""

import json

import pytest

pytestmark = pytest.mark.anyio


async def test_health_needs_no_token_but_everything_else_does(app, api):
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as anon:
        assert (await anon.get("/api/health")).status_code == 200
        for path in ("/api/jobs", "/api/models", "/api/endpoints", "/api/connections"):
            r = await anon.get(path)
            assert r.status_code == 401, path
            assert "token" in r.json()["message"]
        r = await anon.get("/api/jobs", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401


async def test_endpoint_names_are_checked(api):
    for bad in ("ab", "1abc", "a" * 33, "has_underscore", "trailing-"):
        r = await api.post("/api/endpoints", json={"name": bad})
        assert r.status_code == 400, bad
        assert r.json()["field"] == "name"
    r = await api.post("/api/endpoints", json={"name": "my-endpoint-1"})
    assert r.status_code == 201
    body = r.json()
    assert body["scoring_uri"].endswith("/endpoints/my-endpoint-1/score")
    assert (await api.post("/api/endpoints", json={"name": "my-endpoint-1"})).status_code == 409


async def test_keys_and_traffic_rules(api):
    await api.post("/api/endpoints", json={"name": "ep-one"})
    keys = (await api.get("/api/endpoints/ep-one/credentials")).json()
    assert keys["primary_key"] != keys["secondary_key"]
    r = await api.patch("/api/endpoints/ep-one", json={"traffic": {"blue": 100}})
    assert r.status_code == 400 and "blue" in r.json()["message"]
    assert (await api.get("/api/endpoints/nope-nope")).status_code == 404


async def test_scoring_rejects_missing_or_wrong_key(api):
    await api.post("/api/endpoints", json={"name": "ep-two"})
    body = {"input_data": {"input_string": [{"role": "user", "content": "hi"}]}}
    r = await api.post("/endpoints/ep-two/score", json=body, headers={"Authorization": ""})
    assert r.status_code == 401
    r = await api.post("/endpoints/ep-two/score", json=body, headers={"Authorization": "Bearer not-the-key"})
    assert r.status_code == 401
    key = (await api.get("/api/endpoints/ep-two/credentials")).json()["secondary_key"]
    r = await api.post("/endpoints/ep-two/score", json={"params": {}}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 400 and "input_data" in r.json()["message"]
    r = await api.post("/endpoints/ep-two/score", content=b"{not json", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 400
    r = await api.post("/endpoints/ep-two/score", content=b"x" * (1024 * 1024 + 10),
                       headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 413
    r = await api.post("/endpoints/ep-two/score", json=body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 404 and "traffic" in r.json()["message"]


async def test_connections_mask_secrets(api):
    r = await api.post("/api/connections", json={"name": "c1", "type": "custom",
                                                  "configs": {"endpoint": "http://x"}, "secrets": {"key": "k-123"}})
    assert r.status_code == 201 and r.json()["secrets"] == {"key": "******"}
    assert (await api.get("/api/connections/c1")).json()["secrets"] == {"key": "******"}
    full = (await api.get("/api/connections/c1", params={"with_secrets": "true"})).json()
    assert full["secrets"] == {"key": "k-123"}


async def test_job_bad_input_is_clear(api, tmp_path, tiny_model_dir):
    good = tmp_path / "train.jsonl"
    good.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + "{not json\n")

    r = await api.post("/api/jobs", json={"model": "no-such-model", "training_data": str(good)})
    assert r.status_code == 404 and "no-such-model" in r.json()["message"]
    r = await api.post("/api/jobs", json={"model": str(tiny_model_dir), "training_data": str(tmp_path / "missing.jsonl")})
    assert r.status_code == 404 and r.json()["field"] == "training_data"
    r = await api.post("/api/jobs", json={"model": str(tiny_model_dir), "training_data": str(bad)})
    assert r.status_code == 400 and "line 2" in r.json()["message"]
    r = await api.post("/api/jobs", json={"model": str(tiny_model_dir), "training_data": str(good),
                                          "hyperparameters": {"lr": 1}})
    assert r.status_code == 400 and "learning_rate" in r.json()["message"]
    r = await api.post("/api/jobs", json={"model": str(tiny_model_dir), "training_data": str(good),
                                          "hyperparameters": {"lora_r": -1}})
    assert r.status_code == 400 and "lora_r" in r.json()["message"]
    r = await api.post("/api/jobs", json={"model": str(tiny_model_dir), "training_data": str(good)})
    assert r.status_code == 201 and r.json()["status"] == "Queued"


async def test_deployment_of_missing_model_version(api, tiny_model_dir):
    await api.post("/api/endpoints", json={"name": "ep-three"})
    r = await api.post("/api/models", json={"name": "tiny", "path": str(tiny_model_dir)})
    assert r.status_code == 201 and r.json()["version"] == "1"
    r = await api.post("/api/endpoints/ep-three/deployments", json={"name": "blue", "model": "tiny:7"})
    assert r.status_code == 404 and "version" in r.json()["message"]
    r = await api.post("/api/endpoints/ep-three/deployments", json={"name": "blue", "model": "ghost:1"})
    assert r.status_code == 404
    r = await api.post("/api/models", json={"name": "tiny", "from_job": "ft-nope"})
    assert r.status_code == 404


async def test_errors_answer_as_the_exception_tree(app, ws):
    import httpx

    @app.get("/api/boom")
    def boom() -> None:
        raise KeyError("a bug")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    headers = {"Authorization": f"Bearer {ws.admin_token()}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers) as c:
        r = await c.get("/api/boom")
        assert r.status_code == 500 and r.json()["error"] == "InternalError" and "KeyError" in r.json()["message"]
        r = await c.post("/api/endpoints", json={"name": "ep-x", "auth_mode": ["key"]})
        assert r.status_code == 400 and r.json()["error"] == "InvalidInput" and r.json()["field"] == "auth_mode"
