"""Hostile and anonymous requests against the team workspace: a NUL byte in a name or a lookup is a 4xx on both
databases; a request with no credential leaves no audit row; a refused row names a route template, never the path
the client made up; every change says what it was (a role, a token's id) without a secret; reads of secrets are
audited; a user an endpoint still lists cannot be removed; another user's token id is not the caller's to know."""

from __future__ import annotations

import json

import httpx
import pytest

from forgeflow.api.security import COOKIE

pytestmark = pytest.mark.anyio
STUDIO = {"X-Forgeflow-Studio": "1"}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def anon(app, api):
    """A client of the same app that sends no credential (the `api` fixture has started the app)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield c


async def audit(api, **params) -> list[dict]:
    return list(reversed((await api.get("/api/audit", params=params)).json()))


async def test_a_nul_byte_in_a_lookup_is_a_4xx_on_both_databases(database_url, api):
    made = (await api.post("/api/users", json={"name": "alice", "role": "reader"})).json()
    junk = bearer("not-a-key")
    asks = [("GET", "/api/users/a%00b", {}), ("GET", "/api/audit?user=a%00b", {}), ("DELETE", "/api/tokens/a%00b", {}),
            ("GET", "/api/endpoints/a%00b", {}), ("GET", "/api/jobs/a%00b", {}),
            ("GET", "/api/connections/a%00b", {}), ("POST", "/endpoints/a%00b/score", junk),
            ("GET", "/api/users/a%00b", bearer(made["token"]))]
    for method, path, headers in asks:
        r = await api.request(method, path, headers=headers)
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)
    assert (await api.get("/api/audit", params={"user": "a\x00b"})).json()["field"] == "user"
    assert (await api.get("/api/tokens", params={"user": "a\x00b"})).json() == []  # matches nobody
    assert (await api.get("/api/users/alice")).status_code == 200  # the store still answers


async def test_a_request_without_a_credential_leaves_no_audit_row(api, anon):
    before = await audit(api)
    for i in range(60):  # past the failure limit: none of these counts as a failed credential either
        r = await anon.post(f"/api/endpoints/junk-{i}%0Aforged", json={})
        assert r.status_code == 401
    assert (await anon.delete("/api/users/owner")).status_code == 401
    assert (await anon.delete("/api/session")).status_code == 200  # no session to end: nothing happened
    assert await audit(api) == before


async def test_a_refused_credential_is_recorded_with_a_template_never_the_made_up_path(api, anon):
    wrong = bearer("ffp_made_up_token")
    assert (await anon.post("/api/" + "x" * 3000 + "/%1B[31mforged", headers=wrong)).status_code == 401
    assert (await anon.request("BREW", "/api/endpoints", headers=wrong)).status_code == 401
    assert (await anon.delete("/api/endpoints/ep%0A2026-01-01%20owner%20DELETE", headers=wrong)).status_code == 401
    rows = await audit(api)
    assert [(r["user"], r["action"], r["status"]) for r in rows] == [
        (None, "POST (no such route)", 401), (None, "OTHER /api/endpoints", 401),
        (None, "DELETE /api/endpoints/{name}", 401)]
    assert rows[0]["target"] is None and rows[2]["target"] == "ep2026-01-01 owner DELETE"  # no line break kept
    assert "x" * 100 not in json.dumps(rows)


async def test_signing_out_is_recorded_only_when_a_session_ended(api, anon):
    token = (await api.post("/api/users", json={"name": "bob", "role": "reader"})).json()["token"]
    assert (await anon.post("/api/session", json={"token": token})).status_code == 200
    assert COOKIE in anon.cookies
    assert (await anon.delete("/api/session")).status_code == 200
    assert (await anon.delete("/api/session")).status_code == 200  # again: that session is over, nothing ends
    rows = await audit(api)
    assert [(r["user"], r["action"]) for r in rows] == [
        ("owner", "POST /api/users"), ("bob", "POST /api/session"), ("bob", "DELETE /api/session")]


@pytest.mark.parametrize("since", ["999999w", "9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00"])
async def test_a_since_past_the_calendar_is_a_400_naming_since(api, since):
    r = await api.get("/api/audit", params={"since": since})
    assert r.status_code == 400 and r.json()["field"] == "since"


async def test_a_name_with_a_trailing_newline_is_refused(api):
    for body in ({"name": "owner\n", "role": "owner"}, {"name": "alice\n", "role": "reader"}):
        r = await api.post("/api/users", json=body)
        assert r.status_code == 400 and r.json()["field"] == "name"
    assert (await api.post("/api/endpoints", json={"name": "ep-one\n"})).status_code == 400
    r = await api.post("/api/connections", json={"name": "c\n", "configs": {"endpoint": "http://x"}})
    assert r.status_code == 400


async def test_each_change_says_what_it_was_and_never_a_secret(ws, api):
    made = (await api.post("/api/users", json={"name": "carol", "role": "reader"})).json()
    assert (await api.patch("/api/users/carol", json={"role": "contributor"})).status_code == 200
    carol = bearer(made["token"])
    second = (await api.post("/api/tokens", json={"expires_in_days": 7}, headers=carol)).json()
    assert (await api.delete(f"/api/tokens/{second['id']}", headers=carol)).status_code == 200
    assert (await api.post("/api/endpoints", json={"name": "ep-keys"})).status_code == 201
    keys = (await api.post("/api/endpoints/ep-keys/regenerate-keys", json={"key_type": "secondary"})).json()
    rotated = (await api.post("/api/token/rotate")).json()
    owner = bearer(rotated["token"])
    assert (await api.delete("/api/users/carol", headers=owner)).status_code == 200
    rows = list(reversed((await api.get("/api/audit", headers=owner)).json()))
    details = {(r["action"], r["target"]): r["detail"] for r in rows}
    assert details[("POST /api/users", "carol")] == {"role": "reader", "new_token_id": made["id"],
                                                     "expires_at": made["expires_at"]}
    assert details[("PATCH /api/users/{name}", "carol")] == {"role": "contributor", "previous_role": "reader"}
    assert details[("POST /api/tokens", "carol")] == {"new_token_id": second["id"], "expires_at": second["expires_at"],
                                                      "token_id": made["id"]}
    assert details[("DELETE /api/tokens/{token_id}", second["id"])] == {"user": "carol", "token_id": made["id"]}
    assert details[("POST /api/endpoints/{name}/regenerate-keys", "ep-keys")] == {"key_type": "secondary"}
    assert details[("POST /api/token/rotate", None)] == {"token": "owner", "sessions_ended": 0}
    assert details[("DELETE /api/users/{name}", "carol")] == {"tokens_revoked": 1}
    text = json.dumps(rows)
    for secret in (made["token"], second["token"], keys["primary_key"], keys["secondary_key"], rotated["token"]):
        assert secret not in text


async def test_reads_of_secrets_are_audited(api):
    assert (await api.post("/api/endpoints", json={"name": "ep-read"})).status_code == 201
    body = {"name": "svc", "configs": {"endpoint": "http://x"}, "secrets": {"key": "very-secret-value-42"}}
    assert (await api.post("/api/connections", json=body)).status_code == 201
    keys = (await api.get("/api/endpoints/ep-read/credentials")).json()
    assert (await api.get("/api/connections/svc", params={"with_secrets": "true"})).status_code == 200
    assert (await api.get("/api/connections/svc")).status_code == 200  # masked: not a read of secrets
    assert (await api.get("/api/endpoints/ep-read")).status_code == 200
    rows = await audit(api)
    assert [(r["action"], r["target"], r["status"], r["detail"]) for r in rows[2:]] == [
        ("GET /api/endpoints/{name}/credentials", "ep-read", 200, {"read": "credentials"}),
        ("GET /api/connections/{name}", "svc", 200, {"read": "secrets"})]
    assert keys["primary_key"] not in json.dumps(rows) and "very-secret-value-42" not in json.dumps(rows)


async def test_a_user_an_endpoint_still_lists_cannot_be_removed(api):
    assert (await api.post("/api/users", json={"name": "dave", "role": "reader"})).status_code == 201
    body = {"name": "ep-dave", "auth_mode": "token", "allowed_users": ["dave"]}
    assert (await api.post("/api/endpoints", json=body)).status_code == 201
    r = await api.delete("/api/users/dave")
    assert r.status_code == 409 and "ep-dave" in r.json()["message"]
    assert "forgeflow online-endpoint update" in r.json()["message"]
    assert (await api.get("/api/users/dave")).status_code == 200  # nothing was revoked
    assert (await api.patch("/api/endpoints/ep-dave", json={"allowed_users": None})).status_code == 200
    assert (await api.delete("/api/users/dave")).json() == {"deleted": "dave", "tokens_revoked": 1}


async def test_another_users_token_id_is_not_found_and_only_owners_see_the_home(ws, api, anon):
    erin = (await api.post("/api/users", json={"name": "erin", "role": "contributor"})).json()
    frank = (await api.post("/api/users", json={"name": "frank", "role": "reader"})).json()
    theirs = await api.delete(f"/api/tokens/{frank['id']}", headers=bearer(erin["token"]))
    unknown = await api.delete("/api/tokens/0123456789abcdef", headers=bearer(erin["token"]))
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json()["message"].replace(frank["id"], "ID") == unknown.json()["message"].replace("0123456789abcdef",
                                                                                                    "ID")
    assert (await api.get("/api/me", headers=bearer(frank["token"]))).status_code == 200  # still live
    assert "home" not in (await api.get("/api/session", headers=bearer(frank["token"]))).json()
    assert (await api.get("/api/session")).json()["home"] == str(ws.paths.root)
