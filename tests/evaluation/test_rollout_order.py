"""An endpoint's latest rollout is the one started last, even when two start within one second (a rollback and a
second try, scripted): `rollout show`, the endpoint's summary and the history put it first."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

from forgeflow.evaluation import rollout_store
from forgeflow.evaluation.rollout_store import Rollouts
from forgeflow.store import db
from forgeflow.store.states import RolloutState
from forgeflow.store.workspace import Workspace


class _Clock(datetime):
    """Every reading 10 ms after the last, all within one second."""

    moment = datetime(2026, 12, 2, 11, 23, 54, tzinfo=timezone.utc)

    @classmethod
    def now(cls, tz=None):
        cls.moment += timedelta(milliseconds=10)
        return cls.moment


def test_the_rollout_started_last_within_a_second_is_the_latest(monkeypatch):
    rollouts = Rollouts(Workspace.open().store)
    ids = iter(["ffffffffffff", "000000000000"])  # the first's id sorts after the second's
    monkeypatch.setattr(rollout_store.uuid, "uuid4", lambda: SimpleNamespace(hex=next(ids)))
    monkeypatch.setattr(db, "datetime", _Clock)
    spec = {"plan": [10, 100], "promote_if": "error_rate<0.01"}

    first = rollouts.create("shop", "green", spec, {"blue": 100}, "owner")
    rollouts.finish(first, RolloutState.ROLLED_BACK, "error_rate<0.01 failed", {"event": "rolled_back"})
    second = rollouts.create("shop", "green", spec, {"blue": 100}, "owner")
    assert rollouts.latest("shop")["id"] == second["id"]  # running
    rollouts.finish(second, RolloutState.PROMOTED, None, {"event": "promoted"})

    assert first["created_at"][:19] == second["created_at"][:19]  # the same second
    assert rollouts.latest("shop")["id"] == second["id"]
    assert [row["id"] for row in rollouts.of_endpoint("shop")] == [second["id"], first["id"]]
    assert rollouts.latest("shop", since=first["created_at"][:19] + "+00:00")["id"] == second["id"]
