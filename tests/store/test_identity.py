"""Users, roles and personal access tokens in the store (store/identity.py), and the audit log's reading side
(store/audit.py)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from forgeflow.errors import Conflict, InvalidInput, NotFound
from forgeflow.store.audit import since_time
from forgeflow.store.identity import OWNER_USER, Role
from forgeflow.store.workspace import Workspace


@pytest.fixture
def ws(database_url):
    """A workspace on SQLite, and on Postgres."""
    return Workspace.open()


def test_roles_are_ordered_reader_contributor_owner():
    assert Role.OWNER.covers(Role.CONTRIBUTOR) and Role.OWNER.covers(Role.READER) and Role.OWNER.covers(Role.OWNER)
    assert Role.CONTRIBUTOR.covers(Role.READER) and not Role.CONTRIBUTOR.covers(Role.OWNER)
    assert not Role.READER.covers(Role.CONTRIBUTOR)


def test_a_token_is_shown_once_and_kept_only_as_a_hash(ws, database_url):
    ws.identity.create_user("alice", "contributor", created_by=OWNER_USER)
    made = ws.identity.create_token("alice", description="laptop")
    token = made["token"]
    assert token.startswith(f"ffp_{made['id']}_") and len(token) > 50
    assert made["user"] == "alice" and made["role"] == "contributor" and made["revoked_at"] is None
    principal = ws.identity.authenticate(token, ws.admin_token)
    assert (principal.user, principal.role, principal.token_id) == ("alice", Role.CONTRIBUTOR, made["id"])
    # Neither the listing nor the table nor, on SQLite, any file of the database (its write-ahead log too) holds
    # the secret.
    secret = token[len(f"ffp_{made['id']}_"):]  # token_urlsafe's secret may itself hold "_"
    assert secret not in repr(ws.identity.tokens()) and "token_hash" not in ws.identity.tokens()[0]
    assert secret not in repr(ws.store.select("access_tokens"))
    if database_url.startswith("sqlite"):
        files = [p for p in ws.paths.root.iterdir() if p.name.startswith("forgeflow.db")]
        assert files and not any(secret.encode() in p.read_bytes() for p in files)


def test_revoked_expired_and_forged_tokens_authenticate_nobody(ws):
    ws.identity.create_user("bob", "reader", created_by=None)
    made = ws.identity.create_token("bob", expires_in_days=1, at=1_000_000)
    token = made["token"]
    assert ws.identity.authenticate(token, ws.admin_token, at=1_000_000 + 86_399) is not None
    assert ws.identity.authenticate(token, ws.admin_token, at=1_000_000 + 86_400) is None  # expired
    live = ws.identity.create_token("bob")["token"]
    for forged in (live[:-1] + ("A" if live[-1] != "A" else "B"), "ffp_", "ffp_" + "x" * 300, "", None,
                   ws.identity.tokens("bob")[0]["id"]):
        assert ws.identity.authenticate(forged, ws.admin_token) is None
    ws.identity.revoke(ws.identity.authenticate(live, ws.admin_token).token_id)
    assert ws.identity.authenticate(live, ws.admin_token) is None


def test_the_owner_token_is_the_workspace_owner_who_always_stays(ws):
    owner = ws.identity.authenticate(ws.admin_token(), ws.admin_token)
    assert owner == ws.identity.owner() and owner.role == Role.OWNER and owner.token_id is None
    assert ws.identity.user(OWNER_USER)["role"] == "owner"
    with pytest.raises(Conflict, match="owner token"):
        ws.identity.set_role(OWNER_USER, "reader")
    with pytest.raises(Conflict, match="owner token"):
        ws.identity.delete_user(OWNER_USER)
    Workspace.open()  # opening again keeps the one row
    assert [u["name"] for u in ws.identity.users()] == [OWNER_USER]


def test_deleting_a_user_revokes_every_token_and_a_role_change_applies_at_once(ws):
    ws.identity.create_user("carol", "owner", created_by=OWNER_USER)
    first, second = (ws.identity.create_token("carol")["token"] for _ in range(2))
    ws.identity.set_role("carol", "reader")
    assert ws.identity.authenticate(first, ws.admin_token).role == Role.READER
    assert ws.identity.delete_user("carol") == 2
    assert ws.identity.authenticate(first, ws.admin_token) is None
    assert ws.identity.authenticate(second, ws.admin_token) is None
    assert all(t["revoked_at"] for t in ws.identity.tokens("carol"))
    ws.identity.create_user("carol", "reader", created_by=None)  # the same name again: old tokens stay revoked
    assert ws.identity.authenticate(first, ws.admin_token) is None


def test_bad_names_roles_and_expiries_are_refused_naming_the_field(ws):
    for name in ("", "1abc", "a b", "x" * 65, "a/b"):
        with pytest.raises(InvalidInput) as e:
            ws.identity.create_user(name, "reader", created_by=None)
        assert e.value.field == "name"
    with pytest.raises(InvalidInput) as e:
        ws.identity.create_user("dave", "admin", created_by=None)
    assert e.value.field == "role" and "reader, contributor, owner" in e.value.message
    ws.identity.create_user("dave", "reader", created_by=None)
    with pytest.raises(Conflict):
        ws.identity.create_user("dave", "reader", created_by=None)
    for days in (0, 366, -1, True, 1.5):
        with pytest.raises(InvalidInput) as e:
            ws.identity.create_token("dave", expires_in_days=days)
        assert e.value.field == "expires_in_days"
    with pytest.raises(NotFound):
        ws.identity.create_token("nobody")
    with pytest.raises(NotFound):
        ws.identity.revoke("no-such-id")


def test_since_takes_a_span_or_an_iso_time():
    at = datetime(2026, 5, 2, 12, 0, 0, tzinfo=timezone.utc)
    assert since_time("1h", at) == "2026-05-02T11:00:00+00:00"
    assert since_time("2d", at) == "2026-04-30T12:00:00+00:00"
    assert since_time("30m", at) == "2026-05-02T11:30:00+00:00"
    assert since_time("2026-05-01", at) == "2026-05-01T00:00:00+00:00"
    assert since_time("2026-05-01T14:00:00+02:00", at) == "2026-05-01T12:00:00+00:00"
    for bad in ("", "yesterday", "1y", "-1h", "2026-13-01"):
        with pytest.raises(InvalidInput) as e:
            since_time(bad, at)
        assert e.value.field == "since"


def test_the_audit_log_lists_newest_first_by_user_and_time(ws):
    for i in range(5):
        ws.audit.record(f"POST /api/things/{i}", status=200, user="alice" if i % 2 else "bob", role="contributor",
                        target=f"t{i}", client="127.0.0.1")
    rows = ws.audit.list()
    assert [r["target"] for r in rows] == ["t4", "t3", "t2", "t1", "t0"]
    assert [r["target"] for r in ws.audit.list(user="alice")] == ["t3", "t1"]
    assert [r["target"] for r in ws.audit.list(limit=2)] == ["t4", "t3"]
    assert ws.audit.list(since="2999-01-01") == [] and len(ws.audit.list(since="1h")) == 5
    with pytest.raises(InvalidInput):
        ws.audit.list(limit=0)
