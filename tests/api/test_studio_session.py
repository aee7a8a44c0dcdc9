"""Studio sign-in: the cookie session, its CSRF header, and the pages it guards."""

import httpx
import pytest

from forgeflow.api.security import COOKIE
from forgeflow.store.sessions import LIFETIME_S, Sessions

pytestmark = pytest.mark.anyio


@pytest.fixture
def ws(database_url):
    """These tests run on SQLite and on Postgres (tests/conftest.py's database_url)."""
    from forgeflow.store.workspace import Workspace

    return Workspace.open()


@pytest.fixture
async def browser(app):
    """A client with no token: what a browser is before signing in."""
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            yield c


def test_sessions_are_kept_server_side_as_hashes(ws):
    """issue 10, finding 4: a session is a random id the store knows by its hash; ending it is final."""
    sessions, token = Sessions(ws.store), ws.admin_token()

    def valid(session_id, at=1001):
        return sessions.principal(session_id, lambda: token, at=at) is not None

    first, second = sessions.start(token, at=1000), sessions.start(token, at=1000)
    assert first != second and valid(first) and valid(second)
    assert sessions.principal(first, ws.admin_token, at=1001) == ws.identity.owner()
    assert not valid(first, at=1000 + LIFETIME_S + 1)  # expired
    stored = {r["id_hash"] for r in ws.store.select("studio_sessions")}
    assert first not in stored and second not in stored and len(stored) == 2  # only hashes are kept
    assert sessions.end(first) and not valid(first) and valid(second)
    assert not sessions.end(first)  # already ended
    for bad in (None, "", "garbage", next(iter(stored)), "x" * 10_000):
        assert not valid(bad)
    assert sessions.end_owner_sessions() == 1 and not valid(second)


def test_a_sign_in_racing_a_token_rotation_does_not_outlive_it(ws):
    """issue 10, finding 4: a sign-in that checked the old token just before `token rotate` wrote the new one, and
    stored its session just after the rotation ended every session, is still refused: it is bound to the old token."""
    old = ws.admin_token()
    ws.rotate_admin_token()  # between the sign-in's token check and its session insert
    late = Sessions(ws.store).start(old)
    assert Sessions(ws.store).principal(late, ws.admin_token) is None
    assert Sessions(ws.store).principal(Sessions(ws.store).start(ws.admin_token()), ws.admin_token) is not None


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
    assert r.status_code == 200 and r.json() == {"signed_in": True, "user": "owner", "role": "owner",
                                                 "token_id": None, "expires_at": None, "expires_at_utc": None}
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
    browser.cookies.set(COOKIE, "made-up-session-id")
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


async def test_signing_out_ends_the_session_for_every_copy_of_the_cookie(app, browser, ws):
    """issue 10, finding 4: a signed-out cookie no longer works, even replayed from a copy, and a server restart
    does not bring it back."""
    from forgeflow.api.app import create_app

    studio = {"X-Forgeflow-Studio": "1"}
    assert (await browser.post("/api/session", json={"token": ws.admin_token()})).status_code == 200
    stolen = browser.cookies[COOKIE]
    assert (await browser.delete("/api/session")).json() == {"signed_in": False}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                 cookies={COOKIE: stolen}) as replay:
        r = await replay.get("/api/jobs", headers=studio)
        assert r.status_code == 401 and "sign in again" in r.json()["message"]
        assert (await replay.get("/")).status_code == 303
    restarted = create_app(ws, background=False)
    async with restarted.router.lifespan_context(restarted):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=restarted), base_url="http://test",
                                     cookies={COOKIE: stolen}) as replay:
            assert (await replay.get("/api/jobs", headers=studio)).status_code == 401


async def test_rotating_the_admin_token_ends_old_tokens_and_every_session(app, browser, ws):
    """issue 10, finding 4: POST /api/token/rotate makes a new admin token; the old token and all Studio sessions
    stop working at once, also for a server started afterwards."""
    from forgeflow.api.app import create_app

    studio = {"X-Forgeflow-Studio": "1"}
    old = ws.admin_token()
    assert (await browser.post("/api/session", json={"token": old})).status_code == 200
    assert (await browser.get("/api/jobs", headers=studio)).status_code == 200
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as cli:
        r = await cli.post("/api/token/rotate", headers={"Authorization": f"Bearer {old}"})
        assert r.status_code == 200
        new = r.json()["token"]
        assert new != old and new == ws.admin_token() and r.json()["sessions_ended"] == 1
        assert (await cli.get("/api/jobs", headers={"Authorization": f"Bearer {old}"})).status_code == 401
        assert (await cli.get("/api/jobs", headers={"Authorization": f"Bearer {new}"})).status_code == 200
    assert (await browser.get("/api/jobs", headers=studio)).status_code == 401
    restarted = create_app(ws, background=False)
    async with restarted.router.lifespan_context(restarted):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=restarted), base_url="http://test") as cli:
            assert (await cli.get("/api/jobs", headers={"Authorization": f"Bearer {old}"})).status_code == 401
            assert (await cli.get("/api/jobs", headers={"Authorization": f"Bearer {new}"})).status_code == 200


async def test_the_cookie_is_secure_over_https_only(app, ws):
    """issue 10, finding 4: `Secure` when the request itself came over HTTPS; a forwarded-proto header from an
    untrusted hop changes nothing."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://test") as tls:
            r = await tls.post("/api/session", json={"token": ws.admin_token()})
            assert r.status_code == 200 and "secure" in r.headers["set-cookie"].lower()
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as plain:
            r = await plain.post("/api/session", json={"token": ws.admin_token()},
                                 headers={"X-Forwarded-Proto": "https"})
            assert r.status_code == 200 and "secure" not in r.headers["set-cookie"].lower()
