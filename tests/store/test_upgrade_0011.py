"""Revision 0011 (rollouts) upgrades a store at 0010 in place: the table is there, empty, its JSON columns read
back as they were written, and the database itself refuses a second running rollout on one endpoint."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command

from forgeflow.errors import Conflict
from forgeflow.evaluation.rollout_store import Rollouts
from forgeflow.store import migrate
from forgeflow.store.db import Store
from forgeflow.store.states import RolloutState


def test_a_store_at_0010_gets_the_rollouts_table(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    config = migrate._config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0010_deployment_adapters")
    assert migrate.upgrade(engine)[0] == "0011_rollouts"
    engine.dispose()

    rollouts = Rollouts(Store(url))
    assert rollouts.running() == []
    spec = {"plan": [10, 100], "promote_if": "error_rate<0.01"}
    row = rollouts.create("shop", "green", spec, {"blue": 100}, "ana")
    assert (row["state"], row["rollout_spec"], row["previous_traffic"]) == (RolloutState.RUNNING, spec, {"blue": 100})
    assert row["history"][0]["event"] == "started" and row["active_endpoint"] == "shop"
    with pytest.raises(Conflict):
        rollouts.create("shop", "green", spec, {"blue": 100}, "ana")
    # the unique index itself, as two servers racing past the check would meet it
    with pytest.raises(Conflict):
        rollouts.store.insert("rollouts", {**row, "id": "other"})
    rollouts.finish(row, RolloutState.ROLLED_BACK, "error_rate", {"event": "rolled_back"})
    assert rollouts.latest("shop")["state"] == RolloutState.ROLLED_BACK
    assert rollouts.create("shop", "green", spec, {"blue": 100}, "ana")["state"] == RolloutState.RUNNING


def test_one_running_rollout_per_endpoint_on_either_database(database_url):
    rollouts = Rollouts(Store(database_url))
    spec = {"plan": [10, 100], "promote_if": "error_rate<0.01"}
    row = rollouts.create("shop", "green", spec, {"blue": 100}, None)
    with pytest.raises(Conflict):
        rollouts.store.insert("rollouts", {**row, "id": "other"})  # two servers past the check at once
    done = rollouts.finish(row, RolloutState.PROMOTED, None, {"event": "promoted", "traffic": {"green": 100}})
    assert done["history"][-1]["event"] == "promoted"
    again = rollouts.create("shop", "green", spec, {"green": 100}, None)
    assert rollouts.latest("shop")["id"] == again["id"] and rollouts.running("shop")[0]["id"] == again["id"]
