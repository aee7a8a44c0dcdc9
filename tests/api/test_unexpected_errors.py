"""An exception nothing expected is a 500 in the shape of the route's dialect: OpenAI's on an endpoint's /v1,
Azure's on its Azure AI model inference routes, forgeflow's own on /score and the control plane, so each client
shows the message. A gateway function is made to raise inside an in-process app."""

from __future__ import annotations

import httpx
import openai
import pytest

from forgeflow.api import app as app_module
from forgeflow.api.app import create_app
from forgeflow.serving import azure_inference, gateway
from forgeflow.store.workspace import Workspace

pytestmark = pytest.mark.anyio
DOMAIN = "ml.example.com"
MESSAGE = "unexpected server error (RuntimeError)"


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def _boom(*_args, **_kwargs):
    raise RuntimeError("a bug deep in the gateway")


@pytest.fixture
async def served(monkeypatch):
    """(client that lets the app's 500 answers through, the endpoint's key) for endpoint `oops`, whose gateway
    functions all raise."""
    for module, name in ((gateway, "handle"), (gateway, "authorized_config"), (azure_inference, "handle"),
                         (azure_inference, "authorized_config")):
        monkeypatch.setattr(module, name, _boom)
    ws = Workspace.open()
    app = create_app(ws, background=False, endpoint_domain=DOMAIN)
    async with app.router.lifespan_context(app):
        app.state.ff.endpoints.create_endpoint("oops")
        key = app.state.ff.endpoints.credentials("oops")["primary_key"]
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            yield client, key


OPENAI = [("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/v1/models"),
          ("GET", "/v1/models/blue")]
AZURE = [("POST", "/chat/completions"), ("GET", "/info")]


@pytest.mark.parametrize(("method", "path"), OPENAI, ids=[p for _, p in OPENAI])
async def test_openai_routes_answer_openai_errors(served, method, path):
    client, _ = served
    for url, headers in ((f"/endpoints/oops{path}", {}), (path, {"Host": f"oops.{DOMAIN}"})):
        r = await client.request(method, url, json={}, headers=headers)
        assert r.status_code == 500, r.text
        error = r.json()["error"]
        assert error["type"] == "server_error" and error["code"] == "InternalError" and error["param"] is None
        assert error["message"].startswith(MESSAGE), (url, r.text)


async def test_the_openai_client_shows_the_message(served):
    client, key = served
    async with openai.AsyncOpenAI(api_key=key, base_url="http://test/endpoints/oops/v1", max_retries=0,
                                  http_client=client) as oai:
        with pytest.raises(openai.InternalServerError) as caught:
            await oai.chat.completions.create(model="blue", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 500 and MESSAGE in caught.value.message


@pytest.mark.parametrize(("method", "path"), AZURE, ids=[p for _, p in AZURE])
async def test_azure_routes_answer_azure_errors(served, method, path):
    client, _ = served
    for url, headers in ((f"/endpoints/oops{path}", {}), (path, {"Host": f"oops.{DOMAIN}"})):
        r = await client.request(method, url, json={}, headers=headers)
        assert r.status_code == 500, r.text
        error = r.json()["error"]
        assert error["code"] == "InternalError" and error["status"] == 500 and error["message"].startswith(MESSAGE)


async def test_score_and_the_control_plane_keep_forgeflows_shape(served, monkeypatch):
    client, _ = served
    r = await client.post("/endpoints/oops/score", json={})
    assert r.status_code == 500 and r.json()["error"] == "InternalError" and r.json()["message"].startswith(MESSAGE)

    monkeypatch.setattr(app_module, "servers", lambda _store: 1 / 0)
    ws = Workspace.open()
    app = create_app(ws, background=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     headers={"Authorization": f"Bearer {ws.admin_token()}"}) as admin:
            r = await admin.get("/api/servers")
    assert r.status_code == 500 and r.json()["error"] == "InternalError"
    assert r.json()["message"].startswith("unexpected server error (ZeroDivisionError)")
