"""Admission: the one owner of the gateway's counters. A deployment admits at most 2 x
max_concurrent_requests_per_instance x ready instances pending requests (one more is a 429; an autoscaled
deployment waking from zero counts as one instance, and its waiting requests count as pending); an
admitted request goes to the ready instance with the fewest in flight (ties at random) and holds
its place until its `Ticket` is released, exactly once, however the request ends.

Counters change only on the gateway's event loop; the supervisor and the metrics only read them.

Of several servers on one database each counts its own requests; each publishes them (`snapshot`, written on its
`servers` row with its heartbeat), and the leader, whose autoscaler and drains must count every server's requests,
is told what the others published (`set_others`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

from forgeflow.serving.placement import Instance
from forgeflow.serving.records import Key
from forgeflow.serving.specs import max_concurrent


def limit(request_settings: dict, ready_count: int) -> int:
    """How many requests a deployment may have pending."""
    return 2 * max_concurrent(request_settings) * ready_count


class Admission:
    def __init__(self) -> None:
        self._pending: dict[Key, int] = {}
        self._in_flight: dict[Instance, int] = {}
        self._last_at: dict[Key, float] = {}  # when a request for the deployment last came (unix time)
        self._others: list[dict[str, Any]] = []  # what the other servers published (`snapshot`)

    def admit(self, key: Key, request_settings: dict, ready_count: int) -> Ticket | None:
        """A place for one more request to the deployment, or None when it has as many as it takes."""
        self._last_at[key] = time.time()
        pending = self._pending.get(key, 0)
        if pending >= limit(request_settings, ready_count):
            return None
        self._pending[key] = pending + 1
        return Ticket(self, key)

    def pending(self, key: Key) -> int:
        return self._pending.get(key, 0)

    def all_pending(self) -> dict[Key, int]:
        """Every deployment that has had a request, with its pending count (the metrics gauge)."""
        return dict(self._pending)

    def in_flight(self, inst: Instance) -> int:
        return self._in_flight.get(inst, 0)

    # -- several servers -------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """This server's load, for the others: per deployment [endpoint, name, pending, last request's unix time],
        per instance address the requests in flight."""
        # Read from the heartbeat's thread while the event loop counts: copies first (one step each under the GIL).
        last_at, in_flight = list(self._last_at.items()), list(self._in_flight.items())
        return {"deployments": [[e, d, self._pending.get((e, d), 0), at] for (e, d), at in last_at],
                "in_flight": {i.url: n for i, n in in_flight if i.url}}

    def set_others(self, snapshots: list[dict[str, Any]]) -> None:
        """What the other live servers published (the leader's view of their gateways)."""
        self._others = snapshots

    def others_pending(self, key: Key, since: float) -> int:
        """The requests other servers have pending for the deployment; a server that had a request since `since`
        (unix time) counts at least one, as its load is published only every heartbeat."""
        total = 0
        for snap in self._others:
            for endpoint, name, pending, at in snap.get("deployments", ()):
                if (endpoint, name) == key:
                    total += max(int(pending), int(at >= since))
        return total

    def others_in_flight(self, url: str) -> int | None:
        """The requests other servers have in flight on the instance at `url`; None when there is no other server."""
        if not self._others:
            return None
        return sum(int(snap.get("in_flight", {}).get(url, 0)) for snap in self._others)

    def _enter(self, ready: Sequence[Instance]) -> Instance:
        least = min(self._in_flight.get(i, 0) for i in ready)
        inst = random.choice([i for i in ready if self._in_flight.get(i, 0) == least])
        self._in_flight[inst] = least + 1
        return inst

    def _leave(self, inst: Instance) -> None:
        left = self._in_flight[inst] - 1
        if left:
            self._in_flight[inst] = left
        else:
            del self._in_flight[inst]


class Ticket:
    """One admitted request's place in its deployment's queue and on the instance serving it."""

    __slots__ = ("_admission", "key", "instance", "_released")

    def __init__(self, admission: Admission, key: Key) -> None:
        self._admission = admission
        self.key = key
        self.instance: Instance | None = None
        self._released = False

    def place(self, ready: Sequence[Instance]) -> Instance:
        """The instance to send the request to; placing it again (its instance was unreachable) moves it."""
        if self.instance is not None:
            self._admission._leave(self.instance)
        self.instance = self._admission._enter(ready)
        return self.instance

    def unplace(self) -> None:
        """Leave the instance it was placed on (unreachable) while it waits for another; still pending."""
        if self.instance is not None and not self._released:
            self._admission._leave(self.instance)
            self.instance = None

    def release(self) -> None:
        """Give the places back; only the first call counts."""
        if self._released:
            return
        self._released = True
        if self.instance is not None:
            self._admission._leave(self.instance)
        self._admission._pending[self.key] -= 1
