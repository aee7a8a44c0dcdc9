"""The `rollouts` table, of which this module is the one writer: a rollout's plan, the split it restores, its
current step and that step's window start, and its history of decisions. The REST API starts and cancels
rollouts here (any server); the leader's controller (evaluation/rollout.py) moves them on.
"""

from __future__ import annotations

import uuid
from typing import Any

from forgeflow.errors import Conflict, NotFound
from forgeflow.store.db import Store, now
from forgeflow.store.states import RolloutState

TABLE = "rollouts"


class Rollouts:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, endpoint: str, deployment: str, spec: dict, previous: dict[str, int], user: str | None) -> dict:
        """A running rollout; a Conflict naming `name` when the endpoint has one running already (the database's
        unique `active_endpoint` decides between two servers starting one at once)."""
        if self.running(endpoint):
            raise self._busy(endpoint)
        moment = now(precise=True)  # the newest of two rollouts started within a second is the later one
        row = {"id": uuid.uuid4().hex[:12], "endpoint": endpoint, "deployment": deployment,
               "state": RolloutState.RUNNING, "active_endpoint": endpoint, "rollout_spec": spec,
               "previous_traffic": previous, "step_index": 0, "history": [
                   {"at": moment, "event": "started", "by": user, "traffic": previous}],
               "cancel_requested": 0, "created_by": user, "created_at": moment, "updated_at": moment}
        try:
            self.store.insert(TABLE, row)
        except Conflict:
            raise self._busy(endpoint) from None
        return self.get(row["id"])

    @staticmethod
    def _busy(endpoint: str) -> Conflict:
        return Conflict(f"endpoint {endpoint!r} already has a rollout running: see it with forgeflow online-endpoint "
                        f"rollout status --name {endpoint}, or stop it with rollout cancel", field="name")

    def get(self, rollout_id: str) -> dict:
        row = self.store.get(TABLE, id=rollout_id)
        if row is None:
            raise NotFound(f"no rollout {rollout_id!r}")
        return row

    def running(self, endpoint: str | None = None) -> list[dict]:
        where: dict[str, Any] = {"state": RolloutState.RUNNING}
        if endpoint is not None:
            where["endpoint"] = endpoint
        return self.store.select(TABLE, where, order_by="created_at")

    def of_endpoint(self, endpoint: str, since: str = "") -> list[dict]:
        """The endpoint's rollouts, newest first; those created at `since` or later (when the endpoint of this name
        was created: the rows of an endpoint deleted before stay, for the audit, but are not this one's)."""
        return [row for row in self.store.select(TABLE, {"endpoint": endpoint}, order_by="created_at DESC, id DESC")
                if row["created_at"] >= since]

    def latest(self, endpoint: str, since: str = "") -> dict | None:
        """The running rollout, else the newest one (created at `since` or later); None when there is none."""
        running = [row for row in self.running(endpoint) if row["created_at"] >= since]
        if running:
            return running[0]
        rows = self.of_endpoint(endpoint, since)
        return rows[0] if rows else None

    def request_cancel(self, endpoint: str) -> dict:
        """Ask the leader to stop the running rollout and restore the split from before it (next poll)."""
        running = self.running(endpoint)
        if not running:
            raise Conflict(f"endpoint {endpoint!r} has no rollout running", field="name")
        self.store.update(TABLE, {"id": running[0]["id"], "state": RolloutState.RUNNING},
                          {"cancel_requested": 1, "updated_at": now()})
        return self.get(running[0]["id"])

    # -- the controller's writes --------------------------------------------------------
    def advance(self, row: dict, values: dict, event: dict | None = None) -> dict:
        """Write the controller's step (`values`) and append `event` to the history, while the rollout runs."""
        moment = now()
        history = list(row["history"]) + ([{"at": moment, **event}] if event else [])
        self.store.update(TABLE, {"id": row["id"], "state": RolloutState.RUNNING},
                          values | {"history": history, "updated_at": moment})
        return row | values | {"history": history, "updated_at": moment}

    def finish(self, row: dict, state: RolloutState, reason: str | None, event: dict) -> dict:
        """End the rollout in `state`, with why; the endpoint may then have another."""
        return self.advance(row, {"state": state, "reason": reason, "active_endpoint": None,
                                  "finished_at": now()}, event)
