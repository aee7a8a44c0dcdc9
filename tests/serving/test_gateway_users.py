"""Endpoints restricted to users (Azure's AAD-token endpoints): with auth_mode token and allowed_users, the
gateway also takes those users' personal access tokens; anyone else's is 403, a revoked one 401 at once, and the
endpoint's own tokens keep working. A change made through another server is seen within CONFIG_TTL_S."""

from __future__ import annotations

import httpx
import pytest
from gateway_harness import CHAT, post, wait_until

from forgeflow.errors import InvalidInput
from forgeflow.serving.endpoints import EndpointService
from forgeflow.serving.placement import LocalPlacement


def test_allowed_users_call_with_their_own_tokens(gateway):
    ident = gateway.ws.identity
    for name, role in (("alice", "reader"), ("bob", "contributor")):
        ident.create_user(name, role, created_by=None)
    alice, bob = ident.create_token("alice"), ident.create_token("bob")
    endpoint_token = gateway.endpoint("users-ep", auth_mode="token", allowed_users=["alice"])
    gateway.deploy("users-ep", "blue", {"output": "hello"})
    gateway.svc.update_endpoint("users-ep", traffic={"blue": 100})

    r = post(gateway, "users-ep", alice["token"])
    assert r.status_code == 200 and r.json() == {"output": "hello"}  # a reader, named by the endpoint
    r = post(gateway, "users-ep", bob["token"], CHAT, path="v1/chat/completions")
    assert r.status_code == 403 and "'bob' is not among the users" in r.json()["error"]["message"]
    assert post(gateway, "users-ep", endpoint_token).status_code == 200  # the endpoint's own tokens still work
    assert post(gateway, "users-ep", gateway.ws.admin_token()).status_code == 401  # no key to scoring
    ident.revoke(alice["id"])
    assert post(gateway, "users-ep", alice["token"]).status_code == 401  # at once: read from the store each time

    # Another server of the workspace (here: a second service over the same store) changes the list.
    other = EndpointService(gateway.ws, LocalPlacement(gateway.ws.paths), gateway.url)
    other.update_endpoint("users-ep", allowed_users=["bob"])
    wait_until(lambda: post(gateway, "users-ep", bob["token"]).status_code == 200, timeout=10,
               what="the gateway to see allowed_users changed by another server")
    other.update_endpoint("users-ep", allowed_users=None)
    wait_until(lambda: post(gateway, "users-ep", bob["token"]).status_code == 401, timeout=10,
               what="the gateway to see allowed_users cleared by another server")


def test_allowed_users_over_rest_need_token_mode_and_known_users(gateway):
    admin = gateway.admin
    gateway.ws.identity.create_user("carol", "reader", created_by=None)
    r = httpx.post(f"{gateway.url}/api/endpoints", json={"name": "keyed-ep", "allowed_users": ["carol"]}, headers=admin)
    assert r.status_code == 400 and r.json()["field"] == "allowed_users" and "auth_mode 'token'" in r.json()["message"]
    r = httpx.post(f"{gateway.url}/api/endpoints", headers=admin,
                   json={"name": "tok-ep", "auth_mode": "token", "allowed_users": ["carol", "carol"]})
    assert r.status_code == 201 and r.json()["allowed_users"] == ["carol"]
    r = httpx.patch(f"{gateway.url}/api/endpoints/tok-ep", json={"allowed_users": ["nobody"]}, headers=admin)
    assert r.status_code == 400 and "'nobody', who is not a user" in r.json()["message"]
    r = httpx.patch(f"{gateway.url}/api/endpoints/tok-ep", json={"auth_mode": "key"}, headers=admin)
    assert r.status_code == 400 and r.json()["field"] == "allowed_users"
    r = httpx.patch(f"{gateway.url}/api/endpoints/tok-ep", json={"description": "kept"}, headers=admin)
    assert r.json()["allowed_users"] == ["carol"]  # left out: unchanged
    r = httpx.patch(f"{gateway.url}/api/endpoints/tok-ep", json={"auth_mode": "key", "allowed_users": None},
                    headers=admin)
    assert r.status_code == 200 and r.json()["allowed_users"] is None and r.json()["auth_mode"] == "key"
    with pytest.raises(InvalidInput):
        gateway.svc.create_endpoint("bad-users", auth_mode="token", allowed_users=["not a name"])
