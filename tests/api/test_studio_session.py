"""Studio sign-in: the cookie session, its CSRF header, and the pages it guards."""

import httpx
import pytest

from forgeflow.api.security import COOKIE, new_session, valid_session

pytestmark = pytest.mark.anyio


@pytest.fixture
async def browser(app):
    """A client with no token: what a browser is before signing in."""
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            yield c


def test_session_values():
    token = "ffa_secret"
    value = new_session(token, now=1000)
    assert valid_session(value, token, now=1001)
    assert not valid_session(value, "ffa_other", now=1001)  # a new admin token signs everyone out
    assert not valid_session(value, token, now=1000 + 8 * 24 * 3600)  # expired
    expires, mac = value.split(".")
    assert not valid_session(f"{int(expires) + 999}.{mac}", token, now=1001)  # a longer life is not forged
    for bad in (None, "", "garbage", ".", "123.", "x.y", "\u00b2.x", "\u0661\u0662.x"):
        assert not valid_session(bad, token, now=1001)


async def test_pages_need_a_session(browser):
    r = await browser.get("/")
    assert r.status_code == 303 and r.headers["location"] == "/signin"
    assert (await browser.get("/studio/app.js")).status_code == 401
    r = await browser.get("/signin")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert (await browser.get("/api/session")).status_code == 401


async def test_sign_in_with_the_token_then_sign_out(browser, ws):
    r = await browser.post("/api/session", json={"token": "wrong"})
    assert r.status_code == 401 and "forgeflow token show" in r.json()["message"]
    assert COOKIE not in browser.cookies
    r = await browser.post("/api/session", json={"token": ws.admin_token()})
    assert r.status_code == 200 and r.json() == {"signed_in": True}
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and ws.admin_token().lower() not in cookie

    page = await browser.get("/")
    assert page.status_code == 200 and '<script type="module"' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert (await browser.get("/studio/app.js")).status_code == 200
    for traversal in ("%2e%2e%2fpages.py", "..%2Fpages.py", "%2e%2e/%2e%2e/api/app.py", "signin.html"):
        assert (await browser.get(f"/studio/{traversal}")).status_code == 404

    studio = {"X-Forgeflow-Studio": "1"}
    assert (await browser.get("/api/session", headers=studio)).json()["signed_in"] is True
    assert (await browser.get("/api/jobs", headers=studio)).status_code == 200
    # The cookie alone is not enough: another site's form or script cannot add the header.
    r = await browser.post("/api/endpoints", json={"name": "from-evil"})
    assert r.status_code == 401 and "x-forgeflow-studio" in r.json()["message"]
    # The cookie is no key to the model-serving routes.
    await browser.post("/api/endpoints", json={"name": "ep-cookie"}, headers=studio)
    r = await browser.post("/endpoints/ep-cookie/v1/chat/completions", headers=studio,
                           json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401

    assert (await browser.delete("/api/session")).json() == {"signed_in": False}
    assert (await browser.get("/api/session", headers=studio)).status_code == 401
    assert (await browser.get("/")).status_code == 303


async def test_a_forged_or_stale_cookie_is_refused(browser):
    browser.cookies.set(COOKIE, new_session("not-the-admin-token"))
    r = await browser.get("/api/jobs", headers={"X-Forgeflow-Studio": "1"})
    assert r.status_code == 401 and "sign in again" in r.json()["message"]
    assert (await browser.get("/")).status_code == 303


async def test_hyperparameters_describe_every_setting(api):
    from forgeflow.training.hyperparams import FIELD_NAMES

    rows = (await api.get("/api/hyperparameters")).json()
    assert sorted(r["name"] for r in rows) == sorted(FIELD_NAMES)
    by_name = {r["name"]: r for r in rows}
    assert by_name["learning_rate"]["common"] and by_name["learning_rate"]["type"] == "number"
    assert by_name["lr_scheduler_type"]["type"] == "choice" and "cosine" in by_name["lr_scheduler_type"]["choices"]
    assert by_name["packing"]["type"] == "boolean" and by_name["packing"]["default"] is True
    assert by_name["eval_steps"]["nullable"] and by_name["lora_dropout"]["valid"] == "a non-negative number below 1"
    common = [r["common"] for r in rows]
    assert common == sorted(common, reverse=True)  # the common ones come first
