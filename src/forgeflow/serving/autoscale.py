"""Autoscaling: an autoscaled deployment (`scale_settings.type: target_utilization`) keeps as many instances as
its load needs, between `min_instances` and `max_instances`.

One thread, owned by the endpoint service, polls each autoscaled deployment every `polling_interval` seconds: it
reads the requests pending at the gateways (admission's count: queued or in flight, and those waiting for a first
instance; on several servers, what the others published too, and one for a server that had a request lately) and
the mean latency of the requests its instances answered since the last poll (metrics), decides a count
(`decide`, a pure function) and applies it the way an instance_count change goes: the endpoint service writes
the row and the supervisor starts or drains instances. Scaling out happens at once; scaling in waits until the
load has wanted fewer instances for `idle_time_before_scale_down` seconds, and then keeps as many as the busiest
moment of that time wanted.

With `min_instances: 0` an idle deployment goes to zero instances. The gateway then calls `wake`, which asks
for one instance and lets the request wait for it; many first requests at once ask for the same one (the count
is changed only from the value it was read at). Every change is logged with its reason and kept, the last few
per deployment, for `online-deployment show`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from forgeflow.serving import specs
from forgeflow.serving.admission import Admission
from forgeflow.serving.metrics import Metrics
from forgeflow.serving.records import Deployment, Key
from forgeflow.serving.supervisor import DeploymentSupervisor
from forgeflow.store.db import now as timestamp

log = logging.getLogger("forgeflow.deployments")

EVENTS_KEPT = 20
LATENCY = "forgeflow_instance_request_duration_seconds"  # the gateway's own fast refusals left out
WAKE_REASON = "a request arrived while scaled to zero"
OTHERS_LAG_S = 3.0  # how late another server's published load may be (its heartbeat, then the leader's read)


@dataclass(frozen=True)
class Calm:
    """Since when the load has wanted fewer instances than run, and the most it wanted meanwhile."""

    since: float
    peak: int


@dataclass(frozen=True)
class Decision:
    count: int
    reason: str  # why the count changes; empty when it does not
    calm: Calm | None


def decide(settings: dict[str, Any], count: int, pending: int, slots: int, latency_s: float | None,
           calm: Calm | None, now: float) -> Decision:
    """The instance count for a deployment running `count` instances with `pending` requests at the gateway,
    each instance taking `slots` requests at once (max_concurrent_requests_per_instance), and a mean latency of
    `latency_s` over the last poll (None: nothing answered)."""
    low, high = settings["min_instances"], settings["max_instances"]
    target = settings["target_utilization_percentage"]
    wanted = math.ceil(pending * 100 / (slots * target))
    reason = (f"{pending} pending requests, {count} instances of {slots} request slots each; "
              f"target_utilization_percentage {target} wants {wanted}")
    latency_ms = settings.get("target_latency_ms")
    if latency_ms and latency_s is not None and pending and latency_s * 1000 > latency_ms and wanted <= count:
        wanted = count + 1
        reason = f"mean latency {latency_s * 1000:.0f} ms since the last poll, over target_latency_ms {latency_ms}"
    wanted = min(max(wanted, low), high)
    if wanted > count:
        return Decision(wanted, f"scale out: {reason}", None)
    if wanted == count:
        return Decision(count, "", None)
    calm = Calm(now, wanted) if calm is None else Calm(calm.since, max(calm.peak, wanted))
    idle = settings["idle_time_before_scale_down"]
    if now - calm.since < idle:
        return Decision(count, "", calm)
    return Decision(calm.peak, f"scale in: the load wanted at most {calm.peak} instances for {idle:g} s "
                               "(idle_time_before_scale_down)", None)


class ScaleOwner(Protocol):
    """What the autoscaler asks of the owner of the deployments table."""

    def autoscaled(self) -> list[Deployment]:
        """The autoscaled deployments that are settled (Succeeded): neither being created nor updated."""

    def scale_deployment(self, key: Key, expected: int, count: int) -> bool:
        """Change the instance count to `count` if it still is `expected` and the deployment is settled and
        autoscaled; whether it changed."""


class Autoscaler:
    def __init__(self, owner: ScaleOwner, supervisor: DeploymentSupervisor, admission: Admission,
                 metrics: Metrics) -> None:
        self.owner = owner
        self.supervisor = supervisor
        self.admission = admission
        self.metrics = metrics
        self._lock = threading.Lock()
        self._calm: dict[Key, Calm] = {}
        self._due: dict[Key, float] = {}
        self._answered: dict[Key, tuple[float, int]] = {}  # latency sum and count at the last poll
        self._events: dict[Key, deque[dict[str, Any]]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="forgeflow-autoscaler")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pause = self.poll(time.monotonic())
            except Exception:  # a bad poll (the database busy) must not end autoscaling for good
                log.exception("autoscaler poll failed")
                pause = 1.0
            self._stop.wait(pause)

    def poll(self, now: float) -> float:
        """Decide for every deployment that is due; the seconds until the next poll (at most one, so a new
        autoscaled deployment is soon seen)."""
        deps = self.owner.autoscaled()
        settled = {d.key for d in deps}
        with self._lock:
            for table in (self._calm, self._due, self._answered):
                for key in [k for k in table if k not in settled]:  # updated or gone: its clocks start again
                    del table[key]
        next_due = now + 1.0
        for dep in deps:
            due = self._due.get(dep.key, now)
            if due <= now:
                try:
                    self._poll_one(dep, now)
                except Exception:  # e.g. its instances could not start: the others still scale
                    log.exception("autoscaling deployment %s/%s failed", *dep.key)
                due = now + dep.scale_settings["polling_interval"]
                self._due[dep.key] = due
            next_due = min(next_due, due)
        return max(next_due - now, 0.01)

    def _poll_one(self, dep: Deployment, now: float) -> None:
        key = dep.key
        labels = Metrics.labels(endpoint=key[0], deployment=key[1])
        total, answered = self.metrics.totals(LATENCY, labels)
        last_total, last_answered = self._answered.get(key, (total, answered))
        self._answered[key] = (total, answered)
        latency = (total - last_total) / (answered - last_answered) if answered > last_answered else None
        slots = specs.max_concurrent(dep.request_settings)
        # Requests through the other servers count too (their load comes with their heartbeats, a little late).
        since = time.time() - dep.scale_settings["polling_interval"] - OTHERS_LAG_S
        pending = self.admission.pending(key) + self.admission.others_pending(key, since)
        with self._lock:
            decision = decide(dep.scale_settings, dep.instance_count, pending, slots, latency,
                              self._calm.get(key), now)
            if decision.calm is None:
                self._calm.pop(key, None)
            else:
                self._calm[key] = decision.calm
        if decision.count != dep.instance_count:
            self._apply(key, dep.instance_count, decision.count, decision.reason)

    def wake(self, key: Key) -> None:
        """A request found no ready instance of an autoscaled deployment: if it has none at all (scaled to zero),
        ask for one. Cheap when an instance is already on its way, so waiting requests may call it again."""
        if not self.supervisor.instances(*key):
            self._apply(key, 0, 1, WAKE_REASON)

    def _apply(self, key: Key, expected: int, count: int, reason: str) -> bool:
        with self._lock:  # held while the count changes, so `show` never sees a count without its event
            if not self.owner.scale_deployment(key, expected, count):
                return False  # changed meanwhile (an update, another wake): the next poll decides again
            self._calm.pop(key, None)
            self._events.setdefault(key, deque(maxlen=EVENTS_KEPT)).append(
                {"at": timestamp(), "from": expected, "to": count, "reason": reason})
        log.info("deployment %s/%s scaled from %d to %d instances: %s", key[0], key[1], expected, count, reason)
        return True

    def events(self, key: Key) -> list[dict[str, Any]]:
        """The last scaling changes of a deployment, oldest first."""
        with self._lock:
            return list(self._events.get(key, ()))

    def forget(self, key: Key) -> None:
        """The deployment is deleted: a new one of the same name starts with no history."""
        with self._lock:
            self._events.pop(key, None)
