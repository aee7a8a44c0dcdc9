"""A workspace made before the store moved to Alembic (its own `schema_migrations` table, steps 0001..0005) opens
with today's code: it is stamped, upgraded in place, and every row is still there and still readable."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from forgeflow.store import migrate
from forgeflow.store.connections import ConnectionStore
from forgeflow.store.workspace import Workspace
from forgeflow.training.compute.targets import ComputeTargets

DATA = Path(__file__).parent / "data"


@pytest.fixture
def legacy_home(forgeflow_home) -> Path:
    """The committed workspace (tests/store/data/make_workspace_0005.py made it) loaded into this test's home."""
    forgeflow_home.mkdir(parents=True)
    with sqlite3.connect(forgeflow_home / "forgeflow.db") as db:
        db.executescript((DATA / "workspace-0005.sql").read_text())
    shutil.copy(DATA / "workspace-0005.key", forgeflow_home / "secret.key")
    return forgeflow_home


def test_a_workspace_from_before_alembic_upgrades_in_place_and_keeps_every_row(legacy_home):
    admin_before = _setting(legacy_home, "admin_token")
    ws = Workspace.open()
    store = ws.store
    assert migrate.current_revision(store.engine) == migrate.revisions()[-1]
    assert ws.store.get_setting("upgrade_probe") == "kept"
    assert ws.store.get_setting("admin_token") == admin_before  # the same admin token still signs in
    assert ws.admin_token().startswith("ffa_")

    job = store.get("jobs", id="ftjob-legacy0001")
    assert job["status"] == "Completed" and job["hyperparameters"] == {"learning_rate": 0.0002, "lora_r": 8,
                                                                        "max_steps": 3}
    assert job["metrics"] == {"train_loss": 1.25} and job["mlflow_run_id"] == "0123456789abcdef"

    endpoint = store.get("endpoints", name="legacy-ep")
    assert ws.secrets.decrypt(endpoint["primary_key"]) == "legacy-primary-key"
    assert endpoint["traffic"] == {"blue": 100} and endpoint["max_body_bytes"] == 65536
    assert endpoint["allowed_users"] is None  # a column of the new revisions, empty for old rows
    deployment = store.get("deployments", endpoint="legacy-ep", name="blue")
    assert deployment["request_settings"] == {"request_timeout_ms": 90000} and deployment["resources"] == {"cpus": 1}

    assert ConnectionStore(ws).show("legacy-conn", with_secrets=True)["secrets"] == {"key": "legacy-secret"}
    target = ComputeTargets(store).get("legacy-ray")
    assert (target["address"], target["storage"], target["max_concurrent_jobs"]) == (
        "127.0.0.1:6379", "/srv/forgeflow-shared", 2)
    (session,) = store.select("studio_sessions")
    assert session["token_id"] is None and session["expires_at"] == 1796670325

    # the new tables are there and writable; the legacy table is gone; opening again changes nothing
    store.insert("users", {"name": "alice", "role": "reader", "created_at": "x"})
    assert store.get("users", name="alice")["role"] == "reader"
    assert not _has_table(legacy_home, migrate.LEGACY_TABLE)
    assert Workspace.open().store.migrate() == []
    assert len(Workspace.open().store.select("jobs")) == 1


def _setting(home: Path, key: str) -> str:
    with sqlite3.connect(home / "forgeflow.db") as db:
        return db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()[0]


def _has_table(home: Path, name: str) -> bool:
    with sqlite3.connect(home / "forgeflow.db") as db:
        return db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone() is not None
