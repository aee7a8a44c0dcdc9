"""The guard in front of every route (api/guard.py): credentials before bodies, a cap on every body, a limit on
JSON nesting, and a limit on failed credentials per address. Requests go to the app as an ASGI server sends
them, and the tests count the body bytes the app pulled in."""

import json

import httpx
import pytest
from asgi_probe import call, endless

from forgeflow.api.guard import CONTROL_MAX_BYTES, MAX_JSON_DEPTH, SIGN_IN_MAX_BYTES, JsonDepth
from forgeflow.serving.throttle import FailureLimiter

pytestmark = pytest.mark.anyio

HUNDRED_MB = str(100 * 1024 * 1024)


@pytest.fixture
async def served(app):
    async with app.router.lifespan_context(app):
        yield app


def admin(ws) -> dict:
    return {"authorization": f"Bearer {ws.admin_token()}"}


async def test_a_body_without_a_credential_is_refused_unread(served, ws):
    """issue 10, finding 3: an unauthenticated 100 MB POST to the control plane is refused before it is read."""
    for method, path in (("POST", "/api/endpoints"), ("PUT", "/api/datasets/big.jsonl"), ("POST", "/api/jobs"),
                         ("POST", "/api/token/rotate"), ("PATCH", "/api/compute/local")):
        r = await call(served, method, path, chunks=endless(),
                       headers={"content-type": "text/plain", "content-length": HUNDRED_MB})
        assert r.status == 401 and r.json()["error"] == "Unauthorized", (path, r.body)
        assert r.read == 0, path
        assert r.headers["connection"] == "close"  # the rest is not drained: the connection ends
    # A Studio cookie without its CSRF header is no credential either.
    r = await call(served, "POST", "/api/endpoints", chunks=endless(),
                   headers={"cookie": "ff_studio=whatever", "content-length": HUNDRED_MB})
    assert r.status == 401 and r.read == 0
    # Scoring: the gateway refuses a missing or wrong key before it reads too.
    await httpx.AsyncClient(transport=httpx.ASGITransport(app=served), base_url="http://t",
                            headers=admin(ws)).post("/api/endpoints", json={"name": "guarded"})
    for key in (None, "wrong"):
        r = await call(served, "POST", "/endpoints/guarded/score", chunks=endless(),
                       headers={"content-length": HUNDRED_MB} | ({"authorization": f"Bearer {key}"} if key else {}))
        assert r.status == 401 and r.read == 0


async def test_a_declared_length_over_the_cap_is_refused_at_once(served, ws, monkeypatch):
    """issue 10, finding 3: with a good credential, a declared Content-Length over the route's cap is a 413 before
    any of it is read."""
    r = await call(served, "POST", "/api/endpoints", chunks=endless(),
                   headers=admin(ws) | {"content-type": "application/json", "content-length": HUNDRED_MB})
    assert r.status == 413 and r.read == 0 and r.json()["error"] == "PayloadTooLarge"
    assert str(CONTROL_MAX_BYTES) in r.json()["message"] and r.headers["connection"] == "close"
    r = await call(served, "POST", "/api/session", chunks=endless(),
                   headers={"content-type": "application/json", "content-length": str(SIGN_IN_MAX_BYTES + 1)})
    assert r.status == 413 and r.read == 0
    monkeypatch.setenv("FORGEFLOW_MAX_DATASET_BYTES", "100000")  # uploads have their own cap
    r = await call(served, "PUT", "/api/datasets/big.jsonl", chunks=endless(), headers=admin(ws) | {
        "content-length": "100001"})
    assert r.status == 413 and r.read == 0
    r = await call(served, "PUT", "/api/datasets/ok.jsonl", headers=admin(ws) | {"content-length": "118"}, chunks=[
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
        .encode().ljust(118)])
    assert r.status == 201, r.body  # under the upload cap, over nothing
    # Scoring keeps the endpoint's own cap, checked after its key and before reading.
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=served), base_url="http://t", headers=admin(ws))
    await api.post("/api/endpoints", json={"name": "capped", "max_body_bytes": 4096})
    key = (await api.get("/api/endpoints/capped/credentials")).json()["primary_key"]
    for length in ("4097", HUNDRED_MB):
        r = await call(served, "POST", "/endpoints/capped/score", chunks=endless(),
                       headers={"authorization": f"Bearer {key}", "content-length": length})
        assert r.status == 413 and r.read == 0 and "4096" in r.json()["message"]


async def test_a_chunked_body_is_cut_off_once_past_the_cap(served, ws, monkeypatch):
    """issue 10, finding 3: a body without a declared length stops being read as soon as it passes the cap."""
    chunk = 64 * 1024
    r = await call(served, "POST", "/api/connections", chunks=endless(chunk),
                   headers=admin(ws) | {"content-type": "application/json", "transfer-encoding": "chunked"})
    assert r.status == 413 and CONTROL_MAX_BYTES < r.read <= CONTROL_MAX_BYTES + chunk
    assert r.headers["connection"] == "close" and r.chunks_left
    monkeypatch.setenv("FORGEFLOW_MAX_DATASET_BYTES", str(10 * chunk))
    r = await call(served, "PUT", "/api/datasets/grow.jsonl", chunks=endless(chunk),
                   headers=admin(ws) | {"transfer-encoding": "chunked"})
    assert r.status == 413 and r.read <= 11 * chunk
    assert not any((ws.paths.datasets).glob("*")), "nothing of a refused upload is kept"


async def test_deeply_nested_json_is_a_400_not_a_500(served, ws):
    """issue 10, finding 6: JSON nested past MAX_JSON_DEPTH is refused with a 400 while it streams in."""
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=served, raise_app_exceptions=False),
                            base_url="http://t", headers=admin(ws))
    deep = b"[" * 100_000 + b"]" * 100_000
    r = await api.post("/api/endpoints", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "InvalidInput" and str(MAX_JSON_DEPTH) in r.json()["message"]
    assert (await api.post("/api/endpoints", json={"name": "deep-ep"})).status_code == 201
    key = (await api.get("/api/endpoints/deep-ep/credentials")).json()["primary_key"]
    scoring = {"authorization": f"Bearer {key}"}
    r = await api.post("/endpoints/deep-ep/score", content=deep, headers=scoring)
    assert r.status_code == 400 and r.json()["error"] == "InvalidInput"
    r = await api.post("/endpoints/deep-ep/v1/chat/completions", content=b'{"messages": ' + deep + b"}",
                       headers=scoring)
    assert r.status_code == 400 and "nests deeper" in r.json()["error"]["message"]  # OpenAI's error shape
    # Just under the limit reaches the routes, which answer as usual.
    shallow = '{"messages": [{"role": "user", "content": "hi"}], "x": ' + "[" * 60 + "]" * 60 + "}"
    r = await api.post("/endpoints/deep-ep/v1/chat/completions", content=shallow, headers=scoring)
    assert r.status_code == 400 and r.json()["error"]["param"] == "x"  # the chat contract's refusal, not the guard's
    # Brackets inside strings are text, not nesting.
    r = await api.post("/api/connections", json={"name": "brackets", "configs": {"endpoint": "[{" * 5000}})
    assert r.status_code == 201
    # A deeply nested line in an uploaded dataset is a bad row, not a crash.
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    r = await api.put("/api/datasets/deep.jsonl", content=f"{good}\n{deep.decode()}\n".encode())
    assert r.status_code == 201 and [p["line"] for p in r.json()["validation"]["problems"]] == [2]
    assert "nested too deeply" in r.json()["validation"]["problems"][0]["message"]


def test_json_depth_skips_strings_and_escapes_across_chunks():
    depth = JsonDepth(limit=2)
    assert depth.feed(b'{"a": "[[[\\') and depth.feed(b'"[[[" , "b": [1]}') and depth.depth == 0
    depth = JsonDepth(limit=2)
    assert depth.feed(b'[["\\\\"') and depth.in_string is False and not depth.feed(b", [")


async def test_failed_credentials_are_limited_per_address(served, ws):
    """issue 10, finding 10: after 10 failed credentials a minute from one address, the answer is 429 with
    Retry-After; a good credential from that address still works, and other addresses are not affected."""

    def client(address: str, headers: dict | None = None) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=served, client=(address, 50000))
        return httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers or {})

    guesser = client("10.9.0.1", {"authorization": "Bearer ffa_guess"})
    codes = [(await guesser.get("/api/jobs")).status_code for _ in range(12)]
    assert codes == [401] * 10 + [429] * 2
    r = await guesser.post("/api/endpoints", json={"name": "nope"})
    assert r.status_code == 429 and 0 < int(r.headers["retry-after"]) <= 60
    assert r.json()["error"] == "TooManyRequests"
    good = client("10.9.0.1", admin(ws))
    assert (await good.get("/api/jobs")).status_code == 200  # a good credential is never slowed
    assert (await client("10.9.0.2", {"authorization": "Bearer ffa_guess"}).get("/api/jobs")).status_code == 401

    signin = client("10.9.0.3")
    codes = [(await signin.post("/api/session", json={"token": "guess"})).status_code for _ in range(11)]
    assert codes == [401] * 10 + [429]
    assert (await signin.post("/api/session", json={"token": ws.admin_token()})).status_code == 200

    assert (await good.post("/api/endpoints", json={"name": "limited"})).status_code == 201
    scorer = client("10.9.0.4", {"authorization": "Bearer wrong-key"})
    body = {"messages": [{"role": "user", "content": "hi"}]}
    codes = [(await scorer.post("/endpoints/limited/v1/chat/completions", json=body)).status_code for _ in range(11)]
    assert codes == [401] * 10 + [429]
    r = await scorer.post("/endpoints/limited/v1/chat/completions", json=body)
    assert r.headers["retry-after"] and r.json()["error"]["code"] == "TooManyRequests"

    # No credential at all is not a guess: a browser that is not signed in is never throttled.
    anonymous = client("10.9.0.5")
    assert {(await anonymous.get("/api/session")).status_code for _ in range(15)} == {401}


def test_the_failure_window_slides():
    now = [1000.0]
    limiter = FailureLimiter(limit=3, window_s=60, max_clients=2, clock=lambda: now[0])
    assert [limiter.failed("a") for _ in range(3)] == [None, None, None]
    assert limiter.failed("a") == 60
    now[0] += 59.5
    assert limiter.failed("a") == 1  # whole seconds, never 0
    now[0] += 1
    assert limiter.failed("a") is None  # the first failures left the window
    limiter.failed("b")
    limiter.failed("c")
    assert len(limiter._failures) <= 2  # memory stays bounded however many addresses fail


async def test_starlettes_own_refusals_have_the_error_shape(api):
    r = await api.get("/api/no-such-route")
    assert r.status_code == 404 and r.json()["error"] == "NotFound"
    r = await api.post("/api/endpoints", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "InvalidInput"


async def test_a_scoring_request_without_any_key_says_nothing_about_the_endpoint(served):
    """issue 10, finding 3: no key at all is a 401 before the body is read, whether or not the endpoint exists."""
    for path in ("/endpoints/no-such-ep/score", "/endpoints/no-such-ep/v1/chat/completions"):
        r = await call(served, "POST", path, chunks=endless(), headers={"content-length": HUNDRED_MB})
        assert r.status == 401 and r.read == 0
    assert "message" in r.json()["error"]  # OpenAI's error shape on the OpenAI routes
