"""The deployment supervisor: keeps each deployment's instances running wherever its placement puts
them, probes them (liveness: the instance answers HTTP; readiness: `/health` is 200), replaces one
that dies or hangs, and rolls instances on an update without dropping requests.

An autoscaled deployment changes its count through `scale`: missing instances start together and join the
pool as their probes pass, extra ones are drained (those not ready first, then the least busy); a count of
zero is a settled deployment with no instance.

Each instance has a prober thread. Before a deployment first succeeds, an instance that ends is
a broken deployment (failed); after that, it is replaced. A rolling update starts a new instance,
waits until it is ready, adds it to the pool, then drains an old one (no new requests, waits
for its in-flight ones) and stops it, one at a time.

The supervisor writes no rows: it tells its `Reports` (the endpoint service) what happened.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Protocol

import httpx

from forgeflow.serving.admission import Admission
from forgeflow.serving.placement import Instance, Placement
from forgeflow.serving.records import Deployment, Key
from forgeflow.store.states import DeploymentState

log = logging.getLogger("forgeflow.deployments")

READY_TIMEOUT_S = float(os.environ.get("FORGEFLOW_READY_TIMEOUT_S", "600"))
# How long other servers may still send to an instance retired here: the leader publishes it gone, they read the
# board again, and what they have in flight comes with their next heartbeat.
HANDOFF_S = 3.0
DRAIN_GRACE_S = 0.5  # the least time a retired instance is kept before it is stopped (see _drain)


class Reports(Protocol):
    """What the supervisor tells the owner of the deployments table."""

    def deployment_succeeded(self, key: Key) -> None:
        """Every instance of a create or an update is ready."""

    def deployment_failed(self, key: Key, reason: str, *, restored: Deployment | None = None) -> None:
        """The deployment did not come up; after a failed update, `restored` is the spec it rolled back to."""

    def instance_restarted(self, key: Key) -> None:
        """An instance died or hung and was replaced."""


class DeploymentSupervisor:
    def __init__(self, placement: Placement, reports: Reports, admission: Admission, *, poll_s: float = 1.0) -> None:
        self.placement = placement
        self.reports = reports
        self.admission = admission
        self.poll_s = poll_s
        self._instances: dict[Key, list[Instance]] = {}
        self._specs: dict[Key, Deployment] = {}
        self._generation: dict[Key, int] = {}
        # Each spec a launch or an update brings: a create or a roll settles, or undoes, only the spec it was for (a
        # newer update may be let in once the row says Succeeded or Failed, before the older one's last step).
        self._revision: dict[Key, int] = {}
        self._creating: set[Key] = set()  # launched and not yet succeeded: an instance that ends fails it
        self._lock = threading.RLock()
        self._stop = threading.Event()

    def shutdown(self) -> None:
        self._stop.set()
        with self._lock:
            keys = list(self._instances)
        for key in keys:
            self.stop(*key)

    # -- per deployment ----------------------------------------------------------
    def launch(self, dep: Deployment) -> None:
        """Start a deployment's instances from scratch (create, or server start)."""
        key = dep.key
        self.stop(*key)
        with self._lock:
            gen = self._bump(key)
            rev = self._revise(key)
            self._specs[key] = dep
            self._creating.add(key)
            instances = self.placement.start(dep, range(dep.instance_count))
            self._instances[key] = instances
        for inst in instances:
            self._watch(key, inst)
        threading.Thread(target=self._await_created, args=(key, gen, rev), daemon=True).start()

    def update(self, old: Deployment, new: Deployment) -> None:
        """Apply a changed spec: settings at once; a new model (or list of adapters), GGUF type, runtime, compute
        target or resources rolls every instance; a new instance_count adds or drains instances."""
        key = new.key
        with self._lock:
            self._specs[key] = new
            gen = self._generation.get(key, 0)
            rev = self._revise(key)
        # the adapters' order counts: the first is the default
        roll = ((old.model_path, old.model_ref, list(old.adapters.items()), old.gguf_type, old.runtime, old.compute,
                 old.resources)
                != (new.model_path, new.model_ref, list(new.adapters.items()), new.gguf_type, new.runtime,
                    new.compute, new.resources))
        if not roll and old.instance_count == new.instance_count:
            self.reports.deployment_succeeded(key)
            self._settled(key, gen, rev)
            return
        threading.Thread(target=self._roll, args=(key, gen, rev, old, new, roll), daemon=True,
                         name=f"forgeflow-roll-{key[0]}-{key[1]}").start()

    def scale(self, dep: Deployment) -> None:
        """Bring a running deployment to dep.instance_count instances (autoscaling). When its instances cannot
        be started, the placement's error is raised and the deployment is left as it was."""
        key = dep.key
        fresh: list[Instance] = []
        extra: list[Instance] = []
        with self._lock:
            pool = self._instances.get(key)
            if pool is None:
                return
            missing = dep.instance_count - len(pool)
            if missing > 0:  # a start that fails raises here, before anything changed
                fresh = self.placement.start(dep, _free_indexes(pool, missing))
                pool.extend(fresh)
            elif missing < 0:
                extra = sorted(pool, key=lambda i: (i.ready, self.admission.in_flight(i)))[:-missing]
                for inst in extra:  # out of the pool at once: the gateway sends them nothing new
                    pool.remove(inst)
                    inst.retired, inst.ready = True, False
            self._specs[key] = dep
        for inst in fresh:
            self._watch(key, inst)
        for inst in extra:
            threading.Thread(target=self._drain, args=(key, inst, dep), daemon=True,
                             name=f"forgeflow-drain-{key[0]}-{key[1]}-{inst.index}").start()

    def stop(self, endpoint: str, name: str) -> None:
        with self._lock:
            key = (endpoint, name)
            self._bump(key)
            instances = self._instances.pop(key, [])
            self._specs.pop(key, None)
            self._creating.discard(key)
            for inst in instances:
                inst.retired, inst.ready = True, False
        self.placement.stop(instances)

    def ready_instances(self, endpoint: str, name: str) -> list[Instance]:
        with self._lock:
            pool = list(self._instances.get((endpoint, name), ()))
        return [i for i in pool if i.ready and not i.retired and self.placement.ended(i) is None]

    def instances(self, endpoint: str, name: str) -> list[Instance]:
        with self._lock:
            return list(self._instances.get((endpoint, name), []))

    def running(self) -> dict[Key, Deployment]:
        """The spec each deployment it runs was last given (what the endpoint service reconciles with the store);
        a launched one's state turns Succeeded once its instances all were ready."""
        with self._lock:
            return dict(self._specs)

    def pools(self) -> list[tuple[Key, Instance]]:
        """Every instance it keeps, placed or being placed, for publishing to the other servers."""
        with self._lock:
            return [(key, inst) for key, pool in self._instances.items() for inst in pool]

    def ready_counts(self) -> dict[Key, int]:
        with self._lock:
            keys = list(self._instances)
        return {k: len(self.ready_instances(*k)) for k in keys}

    def mark_unready(self, inst: Instance) -> None:
        """The gateway could not connect: route around it until a probe says otherwise."""
        inst.ready = False

    # -- internals -----------------------------------------------------------------
    def _bump(self, key: Key) -> int:
        self._generation[key] = self._generation.get(key, 0) + 1
        return self._generation[key]

    def _revise(self, key: Key) -> int:
        self._revision[key] = self._revision.get(key, 0) + 1
        return self._revision[key]

    def _current(self, key: Key, gen: int) -> bool:
        with self._lock:
            return self._generation.get(key) == gen and not self._stop.is_set()

    def _probes(self, key: Key) -> tuple[dict, dict] | None:
        with self._lock:
            dep = self._specs.get(key)
        return None if dep is None else (dep.liveness_probe, dep.readiness_probe)

    def _watch(self, key: Key, inst: Instance) -> None:
        threading.Thread(target=self._probe_loop, args=(key, inst), daemon=True,
                         name=f"forgeflow-probe-{key[0]}-{key[1]}-{inst.index}").start()

    def _probe_loop(self, key: Key, inst: Instance) -> None:
        # one client for all of an instance's probes: making one costs ~20 ms of CPU (its TLS context), which a
        # probe every period took from the gateway in the same process; no proxy, as the gateway's own hop has none
        with httpx.Client(trust_env=False) as http:
            self._probe(key, inst, http)

    def _probe(self, key: Key, inst: Instance, http: httpx.Client) -> None:
        probes = self._probes(key)
        if probes is None:
            return
        live, ready = probes
        start = time.monotonic()
        next_live, next_ready = start + live["initial_delay"], start + ready["initial_delay"]
        live_fail = ready_fail = ready_ok = 0
        while not inst.retired and not self._stop.is_set():
            ended = self.placement.ended(inst)
            if ended:
                inst.ready = False
                self._lost(key, inst, ended)
                return
            live, ready = self._probes(key) or (live, ready)
            now = time.monotonic()
            if not inst.url:  # still being placed (a cluster may be finding it a node): probes start once it has one
                next_live, next_ready = now + live["initial_delay"], now + ready["initial_delay"]
                self._stop.wait(min(0.1, self.poll_s))
                continue
            if now >= next_ready:
                code = _health(http, inst, ready["timeout"])
                if code == 200:
                    ready_fail, ready_ok = 0, ready_ok + 1
                    if ready_ok >= ready["success_threshold"]:
                        inst.ready = inst.ever_ready = True
                else:
                    ready_ok, ready_fail = 0, ready_fail + 1
                    if ready_fail >= ready["failure_threshold"]:
                        inst.ready = False
                if code is not None:
                    live_fail = 0
                next_ready = time.monotonic() + ready["period"]
            if now >= next_live:
                if _health(http, inst, live["timeout"]) is None:
                    live_fail += 1
                    if live_fail >= live["failure_threshold"]:
                        inst.ready = False
                        self._lost(key, inst, f"failed {live_fail} liveness probes (hung)")
                        return
                else:
                    live_fail = 0
                next_live = time.monotonic() + live["period"]
            pause = min(next_live, next_ready) - time.monotonic()
            self._stop.wait(min(max(pause, 0.02), self.poll_s))

    def _lost(self, key: Key, inst: Instance, reason: str) -> None:
        """An instance died or hung: replace it, or fail a deployment that never came up."""
        with self._lock:
            pool = self._instances.get(key)
            if inst.retired or pool is None or inst not in pool:
                return
            inst.retired = True
            creating = key in self._creating and not inst.ever_ready
        self.placement.stop([inst], grace_s=0)  # hung (maybe stopped): no grace
        if creating:
            self._fail(key, f"instance {inst.index} {reason}: {self.placement.log_tail(inst)}")
            return
        log.warning("deployment %s/%s instance %d %s; restarting", key[0], key[1], inst.index, reason)
        if not inst.ever_ready:
            self._stop.wait(min(2.0 ** min(inst.restarts, 5), 30.0))  # a crash loop backs off
        with self._lock:
            pool = self._instances.get(key)
            if pool is None or inst not in pool:
                return
            [fresh] = self.placement.start(self._specs[key], [inst.index])
            fresh.restarts = inst.restarts + 1
            pool[pool.index(inst)] = fresh
        self.reports.instance_restarted(key)
        self._watch(key, fresh)

    def _await_created(self, key: Key, gen: int, rev: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self._current(key, gen) and time.monotonic() < deadline:
            with self._lock:
                pool = list(self._instances.get(key, []))
                if all(i.ready for i in pool):  # none at all: an autoscaled deployment created at zero
                    self._creating.discard(key)
                    break
            time.sleep(0.1)
        else:
            if self._current(key, gen):
                pending = [i for i in self.instances(*key) if not i.ready]
                self._fail(key, f"instance not ready after {READY_TIMEOUT_S:.0f} s: "
                                f"{self.placement.log_tail(pending[0]) if pending else ''}")
            return
        self.reports.deployment_succeeded(key)
        self._settled(key, gen, rev)  # after the row: what it runs says Succeeded only once the store does

    def _await_instance(self, key: Key, gen: int, inst: Instance) -> str | None:
        """Wait for one new instance; None when ready, else why not."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self._current(key, gen):
                return "the deployment was changed or deleted meanwhile"
            if inst.ready:
                return None
            if inst.retired or self.placement.ended(inst):
                return f"new instance {inst.index} exited: {self.placement.log_tail(inst)}"
            time.sleep(0.1)
        return f"new instance {inst.index} not ready after {READY_TIMEOUT_S:.0f} s"

    def _roll(self, key: Key, gen: int, rev: int, old_spec: Deployment, new: Deployment, roll: bool) -> None:
        with self._lock:
            old = list(self._instances.get(key, []))
        target = new.instance_count
        to_retire = list(old) if roll else old[target:]
        if roll or target > len(old):
            for index in (range(target) if roll else _free_indexes(old, target - len(old))):
                with self._lock:
                    if not self._current(key, gen):
                        return
                    [fresh] = self.placement.start(new, [index])
                    self._instances[key].append(fresh)  # not ready yet: the gateway skips it
                self._watch(key, fresh)
                why = self._await_instance(key, gen, fresh)
                if why:
                    self._rollback(key, gen, rev, old, old_spec, why)
                    return
                if roll and to_retire:
                    self._drain(key, to_retire.pop(0), new)
        for inst in to_retire:
            self._drain(key, inst, new)
        if self._current(key, gen):
            self.reports.deployment_succeeded(key)
            self._settled(key, gen, rev)

    def _settled(self, key: Key, gen: int, rev: int) -> None:
        """After the row says Succeeded, what it runs says so too (an update through another server that changes
        nothing is then only a row to settle: endpoint service's reconcile), unless a newer spec came meanwhile."""
        with self._lock:
            if self._current(key, gen) and self._revision.get(key) == rev and key in self._specs:
                self._specs[key] = self._specs[key].replace(state=DeploymentState.SUCCEEDED)

    def _rollback(self, key: Key, gen: int, rev: int, old: list[Instance], old_spec: Deployment, why: str) -> None:
        with self._lock:
            current = self._current(key, gen)
            if current:  # else stopped, or launched anew: the pool it rolled went (and stopped) with the old
                pool = self._instances.get(key, [])  # generation, and the pool there now is the new launch's
                new_ones = [i for i in pool if i not in old]
                for inst in new_ones:
                    inst.retired, inst.ready = True, False
                self._instances[key] = [i for i in pool if i in old]
        if not current:
            log.info("deployment %s/%s: its update ended unfinished (%s)", key[0], key[1], why)
            return
        log.error("deployment %s/%s update failed: %s", key[0], key[1], why)
        # the row first: the store never says Updating to a spec this supervisor has already undone
        self.reports.deployment_failed(key, f"update failed and was rolled back: {why}", restored=old_spec)
        with self._lock:
            if self._current(key, gen) and self._revision.get(key) == rev:  # not over an update let in since
                self._specs[key] = old_spec
        self.placement.stop(new_ones)

    def _drain(self, key: Key, inst: Instance, spec: Deployment) -> None:
        """Take an instance out of the pool, let its in-flight requests finish, then stop it."""
        with self._lock:
            pool = self._instances.get(key, [])
            if inst in pool:
                pool.remove(inst)
            inst.retired, inst.ready = True, False
        start = time.monotonic()
        limit = start + spec.request_timeout_s + 1
        # a request the gateway's loop placed from a list of ready instances read just before the retirement
        # counts as in flight only once placed: a short grace lets it show before "not busy" is believed
        while (time.monotonic() - start < DRAIN_GRACE_S or self._busy(inst, start)) and time.monotonic() < limit:
            time.sleep(0.05)
        self.placement.stop([inst])

    def _busy(self, inst: Instance, retired_at: float) -> bool:
        """Requests may still reach a retired instance: this server's in flight, and when other servers share the
        database, theirs: those they have in flight, and any they send until they read it retired."""
        if self.admission.in_flight(inst) > 0:
            return True
        others = self.admission.others_in_flight(inst.url)
        return others is not None and (others > 0 or time.monotonic() - retired_at < HANDOFF_S)

    def _fail(self, key: Key, reason: str) -> None:
        """The row says Failed before the instances stop: the store never shows a deployment being created that
        this supervisor no longer runs."""
        log.error("deployment %s/%s failed: %s", key[0], key[1], reason)
        try:
            self.reports.deployment_failed(key, reason)
        finally:
            self.stop(*key)


def _free_indexes(pool: list[Instance], n: int) -> list[int]:
    """The n lowest indexes no instance of the pool has (autoscaling leaves gaps)."""
    taken = {i.index for i in pool}
    return [i for i in range(len(pool) + n) if i not in taken][:n]


def _health(http: httpx.Client, inst: Instance, timeout: float) -> int | None:
    """The status /health answers, or None when the instance does not answer in time."""
    try:
        return http.get(f"{inst.url}/health", headers=inst.auth, timeout=timeout).status_code
    except httpx.HTTPError:
        return None
