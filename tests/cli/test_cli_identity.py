"""`forgeflow user`, `token`, `audit` and `whoami` against the real REST app in process, acting as the owner (the
workspace's owner token) or as a user (FORGEFLOW_TOKEN set to their personal token)."""

from __future__ import annotations

import json

import pytest
from in_process import in_process_cli
from typer.testing import CliRunner

from forgeflow.store.workspace import Workspace

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the .timeout. argument")
runner = CliRunner()


@pytest.fixture
def cli(monkeypatch):
    """Run `forgeflow ...` through an in-process app; the token is the client's own choice."""
    from forgeflow.cli import audit, token, users

    with in_process_cli(monkeypatch, (audit, token, users)) as invoke:
        yield invoke


def as_json(res) -> object:
    return json.loads(res.stdout)


def test_an_owner_adds_users_and_they_act_with_their_own_tokens(cli, monkeypatch):
    made = as_json(cli("user", "create", "alice", "--role", "contributor", "--json"))
    assert made["user"] == "alice" and made["role"] == "contributor" and made["token"].startswith("ffp_")
    assert set(made) >= {"token", "user", "role", "id", "expires_at"}
    plain = cli("user", "create", "bob", "--role", "reader", "--expires-in", "7")
    bob_token = plain.stdout.strip()
    assert bob_token.startswith("ffp_") and "\n" not in bob_token  # the secret alone on stdout, for scripts
    assert [u["name"] for u in as_json(cli("user", "list", "--json"))] == ["alice", "bob", "owner"]
    assert as_json(cli("user", "update", "bob", "--role", "contributor", "--json"))["role"] == "contributor"
    assert as_json(cli("user", "show", "bob", "--json"))["role"] == "contributor"
    assert as_json(cli("whoami", "--json"))["user"] == "owner"

    monkeypatch.setenv("FORGEFLOW_TOKEN", made["token"])  # from here on, the CLI is alice
    me = as_json(cli("whoami", "--json"))
    assert (me["user"], me["role"], me["token_id"], me["expires_at"]) == ("alice", "contributor", made["id"],
                                                                          made["expires_at"])
    second = as_json(cli("token", "create", "--description", "ci", "--expires-in", "30", "--json"))
    assert second["user"] == "alice" and second["description"] == "ci"
    listed = as_json(cli("token", "list", "--json"))
    assert {t["id"] for t in listed} == {made["id"], second["id"]}
    assert made["token"] not in json.dumps(listed) and second["token"] not in json.dumps(listed)
    res = cli("user", "delete", "bob", ok=False)
    assert res.exit_code == 1 and "needs the owner role; you are contributor" in res.output
    res = cli("token", "create", "--user", "bob", ok=False)
    assert res.exit_code == 1 and "making a token for another user" in res.output
    assert as_json(cli("token", "revoke", second["id"], "--json"))["revoked_at"]

    monkeypatch.delenv("FORGEFLOW_TOKEN")  # the owner again
    assert {t["user"] for t in as_json(cli("token", "list", "--json"))} == {"alice", "bob"}
    assert as_json(cli("user", "delete", "bob", "--json")) == {"deleted": "bob", "tokens_revoked": 1}
    res = cli("user", "delete", "owner", ok=False)
    assert res.exit_code == 1 and "cannot be removed" in res.output
    rows = as_json(cli("audit", "list", "--since", "1h", "--json"))
    assert [(r["user"], r["action"]) for r in rows[:3]] == [
        ("owner", "DELETE /api/users/{name}"), ("owner", "DELETE /api/users/{name}"),
        ("alice", "DELETE /api/tokens/{token_id}")]
    assert as_json(cli("audit", "list", "--user", "alice", "--limit", "1", "--json"))[0]["target"] == second["id"]
    assert "alice" in cli("audit", "list", "--limit", "3").stdout  # the table
    res = cli("audit", "list", "--since", "whenever", ok=False)
    assert res.exit_code == 1 and "--since" not in res.output and "since" in res.output


def test_the_owner_token_is_still_shown_and_rotated(cli):
    ws = Workspace.open()
    old = ws.admin_token()
    assert cli("token", "show").stdout.strip() == old
    rotated = as_json(cli("token", "rotate", "--json"))
    assert rotated["token"] != old and rotated["token"] == ws.admin_token()
    assert as_json(cli("whoami", "--json"))["role"] == "owner"


def test_a_name_is_one_path_segment_however_it_is_spelled(cli):
    """`user delete ../tokens/ID` once revoked token ID: every name the CLI puts in a path is quoted whole."""
    made = as_json(cli("user", "create", "gina", "--role", "reader", "--json"))
    for name in (f"../tokens/{made['id']}", "gina/", "..", ".", "gina?x=1", "gina#frag"):
        res = cli("user", "delete", name, ok=False)
        assert res.exit_code == 1 and "Traceback" not in res.output, (name, res.output)
        res = cli("user", "show", name, ok=False)
        assert res.exit_code == 1, name
    res = cli("token", "revoke", "../users/gina", ok=False)
    assert res.exit_code == 1
    assert as_json(cli("user", "show", "gina", "--json"))["name"] == "gina"
    assert as_json(cli("token", "list", "--user", "gina", "--json"))[0]["revoked_at"] is None


def test_whoami_names_the_owner_token(cli):
    assert "token_id: (owner token)" in cli("whoami").stdout


def test_rotating_with_no_server_running_is_audited_as_local(monkeypatch):
    monkeypatch.setenv("FORGEFLOW_URL", "http://127.0.0.1:9")  # nothing listens there
    from forgeflow.cli import main

    ws = Workspace.open()
    old = ws.admin_token()
    res = runner.invoke(main.app, ["token", "rotate", "--json"])
    assert res.exit_code == 0, res.output
    new = json.loads(res.stdout)["token"]
    assert new != old and new == ws.admin_token()
    rows = ws.audit.list()
    assert [(r["user"], r["role"], r["action"], r["client"], r["detail"]) for r in rows] == [
        ("owner", "owner", "POST /api/token/rotate", "local", {"token": "owner", "sessions_ended": 0})]
    assert new not in json.dumps(rows) and old not in json.dumps(rows)
