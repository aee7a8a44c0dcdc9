"""People and tokens over REST (/api/users, /api/tokens, /api/me, Studio sign-in with a personal token), a revoked or
expired token refused at once by every server of a workspace, and the audit log of every change."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from forgeflow.api.app import create_app
from forgeflow.api.security import COOKIE
from forgeflow.store.workspace import Workspace

pytestmark = pytest.mark.anyio
STUDIO = {"X-Forgeflow-Studio": "1"}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def team_ws(database_url):
    """A workspace on SQLite, and on Postgres."""
    return Workspace.open()


@pytest.fixture
async def two_servers(team_ws):
    """Two apps over one workspace database, as two servers of a team share one store."""
    ws = team_ws
    apps = [create_app(ws, background=False), create_app(Workspace.open(ws.paths), background=False)]
    async with apps[0].router.lifespan_context(apps[0]), apps[1].router.lifespan_context(apps[1]):
        clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://test") for a in apps]
        yield clients
        for c in clients:
            await c.aclose()


async def test_an_owner_adds_a_user_who_works_with_the_first_token(api):
    r = await api.post("/api/users", json={"name": "alice", "role": "contributor"})
    assert r.status_code == 201
    made = r.json()
    assert made["user"] == "alice" and made["role"] == "contributor" and made["token"].startswith("ffp_")
    assert made["id"] in made["token"] and made["expires_at"] > time.time() + 89 * 86400
    alice = bearer(made["token"])
    me = (await api.get("/api/me", headers=alice)).json()
    assert me == {"user": "alice", "role": "contributor", "token_id": made["id"], "expires_at": made["expires_at"],
                  "expires_at_utc": made["expires_at_utc"]}
    assert (await api.get("/api/me")).json()["user"] == "owner"  # the owner token
    assert [u["name"] for u in (await api.get("/api/users")).json()] == ["alice", "owner"]
    # A contributor changes things but not people.
    assert (await api.post("/api/endpoints", json={"name": "ep-alice"}, headers=alice)).status_code == 201
    r = await api.post("/api/users", json={"name": "mallory", "role": "owner"}, headers=alice)
    assert r.status_code == 403 and "needs the owner role; you are contributor" in r.json()["message"]
    r = await api.patch("/api/users/alice", json={"role": "owner"}, headers=alice)
    assert r.status_code == 403
    # Demoted, alice's very next request has the new role.
    assert (await api.patch("/api/users/alice", json={"role": "reader"})).json()["role"] == "reader"
    assert (await api.delete("/api/endpoints/ep-alice", headers=alice)).status_code == 403
    assert (await api.get("/api/endpoints/ep-alice", headers=alice)).status_code == 200
    # The workspace owner stays.
    assert (await api.delete("/api/users/owner")).status_code == 409
    assert (await api.patch("/api/users/owner", json={"role": "contributor"})).status_code == 409
    assert (await api.post("/api/users", json={"name": "alice", "role": "reader"})).status_code == 409
    r = await api.post("/api/users", json={"name": "bob", "role": "admin"})
    assert r.status_code == 400 and r.json()["field"] == "role"


async def test_users_manage_their_own_tokens_and_only_owners_others(api):
    alice = (await api.post("/api/users", json={"name": "alice", "role": "reader"})).json()
    bob = (await api.post("/api/users", json={"name": "bob", "role": "contributor"})).json()
    as_alice, as_bob = bearer(alice["token"]), bearer(bob["token"])
    r = await api.post("/api/tokens", json={"description": "ci", "expires_in_days": 7}, headers=as_alice)
    assert r.status_code == 201 and r.json()["user"] == "alice" and r.json()["description"] == "ci"
    second = r.json()
    mine = (await api.get("/api/tokens", headers=as_alice)).json()
    assert {t["id"] for t in mine} == {alice["id"], second["id"]} and all("token" not in t for t in mine)
    assert {t["user"] for t in (await api.get("/api/tokens")).json()} == {"alice", "bob"}  # the owner sees all
    assert [t["user"] for t in (await api.get("/api/tokens", params={"user": "bob"})).json()] == ["bob"]
    r = await api.get("/api/tokens", params={"user": "bob"}, headers=as_alice)
    assert r.status_code == 403 and "listing another user's tokens" in r.json()["message"]
    r = await api.post("/api/tokens", json={"user": "bob"}, headers=as_alice)
    assert r.status_code == 403 and "making a token for another user" in r.json()["message"]
    r = await api.delete(f"/api/tokens/{bob['id']}", headers=as_alice)
    assert r.status_code == 404 and "no token with id" in r.json()["message"]  # not alice's to know it exists
    assert (await api.delete(f"/api/tokens/{second['id']}", headers=as_alice)).json()["revoked_at"]
    assert (await api.get("/api/me", headers=bearer(second["token"]))).status_code == 401
    assert (await api.post("/api/tokens", json={"user": "alice"})).status_code == 201  # an owner may
    r = await api.post("/api/tokens", json={"expires_in_days": 400}, headers=as_bob)
    assert r.status_code == 400 and r.json()["field"] == "expires_in_days"
    out = (await api.delete("/api/users/alice")).json()
    assert out == {"deleted": "alice", "tokens_revoked": 2}  # the first token and the owner-made one
    assert (await api.get("/api/me", headers=as_alice)).status_code == 401


async def test_a_revoked_or_expired_token_is_refused_at_once_by_every_server(team_ws, two_servers):
    ws = team_ws
    one, two = two_servers
    ws.identity.create_user("carol", "contributor", created_by=None)
    made = ws.identity.create_token("carol")
    carol = bearer(made["token"])
    for server in (one, two):
        assert (await server.get("/api/jobs", headers=carol)).status_code == 200
    r = await one.delete(f"/api/tokens/{made['id']}", headers=carol)  # revoked through the first server
    assert r.status_code == 200
    for server in (one, two):
        r = await server.get("/api/jobs", headers=carol)
        assert r.status_code == 401 and "revoked" in r.json()["message"]
    expired = ws.identity.create_token("carol", expires_in_days=1, at=time.time() - 2 * 86400)["token"]
    for server in (one, two):
        assert (await server.get("/api/jobs", headers=bearer(expired))).status_code == 401


async def test_studio_signs_in_with_a_personal_token_and_revoking_it_ends_the_session(team_ws, two_servers):
    ws = team_ws
    one, two = two_servers
    ws.identity.create_user("dana", "reader", created_by=None)
    made = ws.identity.create_token("dana")
    r = await one.post("/api/session", json={"token": made["token"]})
    assert r.status_code == 200
    assert r.json() == {"signed_in": True, "user": "dana", "role": "reader", "token_id": made["id"],
                        "expires_at": made["expires_at"], "expires_at_utc": made["expires_at_utc"]}
    cookie = {COOKIE: one.cookies[COOKIE]}
    assert made["token"] not in r.headers["set-cookie"]
    stored = ws.store.select("studio_sessions")
    assert [s["token_id"] for s in stored] == [made["id"]]
    two.cookies.update(cookie)  # the same browser, its requests landing on the other server
    assert (await two.get("/api/session", headers=STUDIO)).json()["user"] == "dana"
    assert (await two.post("/api/endpoints", json={"name": "ep-dana"}, headers=STUDIO)).status_code == 403
    assert (await two.get("/", follow_redirects=False)).status_code == 200
    ws.identity.revoke(made["id"])
    for server in (one, two):
        assert (await server.get("/api/jobs", headers=STUDIO)).status_code == 401
        assert (await server.get("/", follow_redirects=False)).status_code == 303
    # Rotating the owner token leaves personal tokens' sessions alone.
    fresh = ws.identity.create_token("dana")["token"]
    one.cookies.clear()
    assert (await one.post("/api/session", json={"token": fresh})).status_code == 200
    assert ws.rotate_admin_token()["sessions_ended"] == 0
    assert (await one.get("/api/jobs", headers=STUDIO)).status_code == 200


async def test_every_change_is_audited_with_who_what_where_and_never_a_secret(ws, api):
    made = (await api.post("/api/users", json={"name": "erin", "role": "contributor"})).json()
    erin = bearer(made["token"])
    body = {"name": "walkthrough", "configs": {"endpoint": "http://x"}, "secrets": {"key": "very-secret-value-42"}}
    assert (await api.post("/api/connections?with_secrets=true", json=body, headers=erin)).status_code == 201
    assert (await api.post("/api/endpoints", json={"name": "bad name"}, headers=erin)).status_code == 400
    assert (await api.delete("/api/users/owner", headers=erin)).status_code == 403
    assert (await api.get("/api/connections/walkthrough", headers=erin)).status_code == 200  # a read: not audited
    assert (await api.get("/api/jobs", headers=bearer("ffp_made_up_token"))).status_code == 401
    assert (await api.post("/api/session", json={"token": made["token"]})).status_code == 200
    rows = (await api.get("/api/audit", params={"since": "1h"})).json()
    actions = [(r["user"], r["action"], r["target"], r["status"]) for r in reversed(rows)]
    assert actions == [
        ("owner", "POST /api/users", "erin", 201),
        ("erin", "POST /api/connections", "walkthrough", 201),
        ("erin", "POST /api/endpoints", "bad name", 400),
        ("erin", "DELETE /api/users/{name}", "owner", 403),
        (None, "GET /api/jobs", None, 401),
        ("erin", "POST /api/session", None, 200),
    ]
    assert {r["client"] for r in rows} == {"127.0.0.1"}
    assert rows[-2]["role"] == "contributor" and rows[-2]["detail"] == {"token_id": made["id"]}
    text = json.dumps(rows)
    for secret in ("very-secret-value-42", made["token"], ws.admin_token(), "with_secrets"):
        assert secret not in text
    assert [r["action"] for r in (await api.get("/api/audit", params={"user": "owner"})).json()] == ["POST /api/users"]
    assert len((await api.get("/api/audit", params={"limit": 2})).json()) == 2
    r = await api.get("/api/audit", params={"since": "last tuesday"})
    assert r.status_code == 400 and r.json()["field"] == "since"
    assert (await api.get("/api/audit", headers=erin)).status_code == 200  # no secrets in it: readers may read it
