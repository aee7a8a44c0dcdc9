import os
import stat
import subprocess
import sys

import pytest

from forgeflow.errors import Conflict, InvalidInput, NotFound
from forgeflow.store.connections import ConnectionStore
from forgeflow.store import migrate
from forgeflow.store.db import Store
from forgeflow.store.secrets import same
from forgeflow.store.workspace import Workspace


def test_workspace_creates_home_and_token(forgeflow_home, database_url, stored_text):
    ws = Workspace.open()
    assert ws.paths.root == forgeflow_home.resolve()
    assert ws.paths.artifacts.is_dir() and ws.store.get_setting("admin_token")
    assert stat.S_IMODE(os.stat(ws.paths.secret_key).st_mode) == 0o600
    token = ws.admin_token()
    assert token.startswith("ffa_") and len(token) > 30
    assert Workspace.open().admin_token() == token  # stable across opens
    assert token not in stored_text(ws.store)  # encrypted at rest


def test_migrations_apply_once(database_url):
    store = Store(database_url)
    assert store.migrate() == []
    assert migrate.current_revision(store.engine) == migrate.revisions()[-1]
    assert [r["version_num"] for r in store.select(migrate.VERSION_TABLE)] == [migrate.revisions()[-1]]


def test_the_head_read_from_file_names_is_alembics_head():
    from alembic.script import ScriptDirectory

    assert migrate.HEAD == ScriptDirectory.from_config(migrate._config()).get_current_head() == migrate.revisions()[-1]


def test_opening_an_up_to_date_workspace_does_not_import_alembic(database_url):
    """Every CLI command that reads the owner token opens the workspace: Alembic is loaded only to migrate."""
    Workspace.open()
    code = ("import sys; from forgeflow.store.workspace import Workspace; ws = Workspace.open(); ws.admin_token(); "
            "assert 'alembic' not in sys.modules, 'alembic imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert done.returncode == 0, done.stderr[-2000:]


def test_connection_secrets_encrypted_and_masked(database_url, stored_text):
    ws = Workspace.open()
    conns = ConnectionStore(ws)
    conns.upsert("c1", "custom", {"endpoint": "http://x/score"}, {"key": "s3cr3t-value"})
    assert "http://x/score" in stored_text(ws.store) and "s3cr3t-value" not in stored_text(ws.store)
    assert conns.show("c1")["secrets"] == {"key": "******"}
    assert conns.show("c1", with_secrets=True)["secrets"] == {"key": "s3cr3t-value"}
    with pytest.raises(Conflict):
        conns.upsert("c1", "custom", {}, {})
    with pytest.raises(InvalidInput):
        conns.upsert("bad name!", "custom", {}, {})
    with pytest.raises(InvalidInput):
        conns.upsert("c2", "nope", {}, {})
    conns.delete("c1")
    with pytest.raises(NotFound):
        conns.show("c1")


def test_same_is_constant_time_compare():
    assert same("abc", "abc")
    assert not same("abc", "abd")
    assert not same(None, "abc")
    assert not same("", "")


def test_an_update_can_expect_one_of_several_values(database_url):
    """A tuple or set in `where` is one conditional write (`IN`): it changes only rows still in one of them."""
    store = Store(database_url)
    for key, value in (("a", "Running"), ("b", "Starting"), ("c", "Completed")):
        store.insert("settings", {"key": key, "value": value})
    assert store.update("settings", {"value": {"Starting", "Running", "bad\x00"}}, {"value": "CancelRequested"}) == 2
    assert store.update("settings", {"key": ("c",), "value": ("Running", "Starting")}, {"value": "x"}) == 0
    assert store.update("settings", {"value": set()}, {"value": "x"}) == 0
    assert store.update("settings", {"value": ("\x00",)}, {"value": "x"}) == 0
    assert {r["key"]: r["value"] for r in store.select("settings") if r["key"] in ("a", "b", "c")} == {
        "a": "CancelRequested", "b": "CancelRequested", "c": "Completed"}
