"""What the leader runs, shared with the other servers of its database, and the store as the source of truth.

Only the leading server runs a supervisor (store/leadership.py), yet every server's gateway serves every endpoint.
The leader publishes its instances (address, readiness, restarts, its host, and the instance's secret encrypted
with the workspace key) in the `deployment_instances` table, which `InstanceBoard` alone writes; a follower's
gateway forwards to the ready instances it reads there, read again every READ_CACHE_S on a thread of its own
(`follow`) so it follows restarts and rolling updates while a request reads only memory; a follower on another host
skips instances on the leader's loopback. The leader's own gateway keeps using the supervisor's memory.

A change made through a follower (a deployment created, updated, scaled or deleted) is only written to the store;
`reconcile`, run by the leader every poll, brings the supervisor to what the store says.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from forgeflow.errors import ServerUnavailable
from forgeflow.serving.placement import Instance
from forgeflow.serving.records import Deployment, Key
from forgeflow.serving.supervisor import DeploymentSupervisor
from forgeflow.store.db import Store, now
from forgeflow.store.leadership import gateway_loads
from forgeflow.store.secrets import SecretBox
from forgeflow.store.states import DeploymentState

log = logging.getLogger("forgeflow.deployments")

TABLE = "deployment_instances"
SYNC_S = 0.5  # how often the leader reconciles and publishes
READ_CACHE_S = 0.5
REFRESH_MIN_S = 0.1  # a follower that finds no ready instance reads the board again, at most this often
UNREACHABLE_S = 2.0  # a follower that could not connect to an instance skips it this long (the leader's probes decide)
# A stored deployment the leader does not run is started in these states: created or updated through a follower
# (a failed one waits for its next update).
STARTABLE = (DeploymentState.CREATING, DeploymentState.UPDATING)


def reconcile(supervisor: DeploymentSupervisor, stored: Callable[[], Iterable[Deployment]]) -> list[Key]:
    """Bring the supervisor to the changes followers wrote: start a deployment created (or a failed one updated, or
    one deleted and created again), roll an update, apply an instance count a follower's wake wrote, stop what was
    deleted. The keys it stopped.

    The leader's own changes reach its supervisor directly, under the endpoint service's deployments lock, which
    the caller holds; the supervisor writes a failure (and a rollback's restored spec) before it acts on it, so
    the store never shows a change the supervisor is merely undoing. It also writes a success before what it runs
    says so; so what runs is read here first and the stored rows after, never older than it (read the other way
    round, a deployment that succeeded between the two reads looked deleted and created again, and its ready
    instances were started anew)."""
    running = supervisor.running()
    wanted = {dep.key: dep for dep in stored()}
    for key, dep in wanted.items():
        current = running.get(key)
        if current is None:
            if dep.state in STARTABLE:
                log.info("deployment %s/%s was %s through another server: starting it", *key,
                         "created" if dep.state == DeploymentState.CREATING else "updated")
                supervisor.launch(dep)
            continue
        changed = {k for k, v in dep.spec().items() if _comparable(current.spec()[k], k) != _comparable(v, k)}
        if _recreated(current, dep, changed):
            log.info("deployment %s/%s was deleted and created again through another server: starting it anew",
                     *key)
            supervisor.launch(dep)  # stops the old instances first
        elif dep.state == DeploymentState.UPDATING and (changed or current.state == DeploymentState.SUCCEEDED):
            supervisor.update(current, dep)  # with nothing changed (and no roll running) it only settles the row
        elif changed == {"instance_count"} and dep.state == DeploymentState.SUCCEEDED:
            supervisor.scale(dep)
    gone = [key for key in running if key not in wanted]
    for key in gone:
        log.info("deployment %s/%s was deleted through another server: stopping its instances", *key)
        supervisor.stop(*key)
    return gone


def _recreated(running: Deployment, stored: Deployment, changed: set[str]) -> bool:
    """The stored row is another deployment of the same name than the one running (deleted and created again
    between two passes): it was created at another time, or it is being created while what runs was created
    already or is being updated, or it is being created with another spec than the creation running."""
    if stored.state != DeploymentState.CREATING:
        return stored.created_at != running.created_at
    return stored.created_at != running.created_at or running.state != DeploymentState.CREATING or bool(changed)


def _comparable(value, field: str = ""):
    """A spec value as the store gives it back (JSON has no tuples, and 1.0 reads back as 1). The adapters' order
    counts (the first is the default), so they compare as a list of pairs."""
    if field == "adapters" and isinstance(value, dict):
        return [[k, _comparable(v)] for k, v in value.items()]
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class InstanceBoard:
    """The one writer of `deployment_instances`: the leader publishes there, followers read from there."""

    def __init__(self, store: Store, secrets: SecretBox) -> None:
        self.store = store
        self.secrets = secrets
        self._ids: weakref.WeakKeyDictionary[Instance, tuple[str, str]] = weakref.WeakKeyDictionary()
        self._published: dict[str, tuple] = {}
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._known: dict[str, Instance] = {}  # what a follower read, by id: the same object while it lasts
        self._by_key: dict[Key, list[Instance]] = {}
        self._unreachable: dict[str, float] = {}
        self._host = socket.gethostname()
        self._elsewhere: set[str] = set()  # ids of instances on another host's loopback: not reachable from here
        self._reader: threading.Thread | None = None
        self._stop_reading = threading.Event()

    # -- the leader ------------------------------------------------------------------
    def clear(self) -> None:
        """A new leader starts from an empty board: the instances of the server before it died with it."""
        with self._lock:
            self.store.execute(f"DELETE FROM {TABLE}")
            self._published = {}

    def publish(self, supervisor: DeploymentSupervisor, server_id: str) -> None:
        """Write what changed since the last call: the supervisor's instances that have an address, whether each is
        ready, its restarts."""
        ready = {i for key in supervisor.running() for i in supervisor.ready_instances(*key)}
        with self._lock:
            seen: dict[str, tuple] = {}
            for key, inst in supervisor.pools():
                if not inst.url or inst.retired:
                    continue
                ident = self._ids.get(inst)
                if ident is None:
                    ident = self._ids[inst] = (uuid.uuid4().hex[:16], self.secrets.encrypt(inst.secret))
                seen[ident[0]] = (key, inst.index, inst.url, int(inst in ready), inst.restarts, ident[1])
            for gone in self._published.keys() - seen.keys():
                self.store.delete(TABLE, {"id": gone})
            for ident, state in seen.items():
                old = self._published.get(ident)
                if old == state:
                    continue
                (endpoint, name), index, url, is_ready, restarts, secret = state
                if old is None:
                    self.store.insert(TABLE, {"id": ident, "endpoint": endpoint, "deployment": name, "idx": index,
                                              "url": url, "ready": is_ready, "secret": secret, "restarts": restarts,
                                              "server_id": server_id, "updated_at": now(), "host": self._host})
                else:
                    self.store.update(TABLE, {"id": ident}, {"url": url, "ready": is_ready, "restarts": restarts,
                                                             "updated_at": now()})
            self._published = seen

    # -- a follower ------------------------------------------------------------------
    def follow(self) -> None:
        """Read the board every READ_CACHE_S on a thread of its own (a follower's gateway then reads memory only),
        until `unfollow`."""
        if self._reader is None:
            self._stop_reading.clear()
            self._reader = threading.Thread(target=self._follow, daemon=True, name="forgeflow-instances-read")
            self._reader.start()

    def unfollow(self) -> None:
        if self._reader is not None:
            self._stop_reading.set()
            self._reader.join(10)
            self._reader = None

    def _follow(self) -> None:
        while True:
            try:
                self._read()
            except Exception:  # a busy database must not end it for good: the last board stays until it answers
                log.exception("reading the leader's instances from the store failed")
            if self._stop_reading.wait(READ_CACHE_S):
                return

    def instances(self, key: Key) -> list[Instance]:
        """The leader's instances of a deployment, as last published (at most READ_CACHE_S old); read here when no
        thread follows the board."""
        if self._reader is None and time.monotonic() - self._read_at >= READ_CACHE_S:
            self._read()
        with self._lock:
            return list(self._by_key.get(key, ()))

    def ready(self, key: Key) -> list[Instance]:
        """The ready instances this server can reach; a 503 saying why when every one listens on the loopback of the
        leader's host, another host than this one."""
        moment = time.monotonic()
        instances = self.instances(key)
        reachable = [i for i in instances if self._ident(i) not in self._elsewhere]
        if instances and not reachable:
            raise ServerUnavailable(
                f"deployment {key[1]!r} of endpoint {key[0]!r}: this deployment's instances listen on the leader's "
                f"loopback (the leader runs on another host than this server, {self._host}); place it on a Ray "
                "target to serve it from other machines, or send its requests to the leading server")
        return [i for i in reachable if i.ready and self._unreachable.get(self._ident(i), 0.0) <= moment]

    def refresh(self, key: Key) -> list[Instance]:
        """`ready` after reading the board again (blocking: call it off the event loop), unless it was read within
        REFRESH_MIN_S: a deployment that just became ready is served at once, and a flood of requests for one that
        has no instance costs the database at most one read per REFRESH_MIN_S."""
        if time.monotonic() - self._read_at >= REFRESH_MIN_S:
            self._read()
        return self.ready(key)

    def mark_unreachable(self, inst: Instance) -> None:
        """This server could not connect to it: skip it for a while, until the leader's probes have spoken."""
        self._unreachable[self._ident(inst)] = time.monotonic() + UNREACHABLE_S

    def _ident(self, inst: Instance) -> str:
        ident = self._ids.get(inst)
        return ident[0] if ident else ""

    def _read(self) -> None:
        rows = self.store.select(TABLE, order_by="idx")  # outside the lock: a request never waits for the database
        with self._lock:
            self._apply(rows)

    def _apply(self, rows: list[dict]) -> None:
        known: dict[str, Instance] = {}
        by_key: dict[Key, list[Instance]] = {}
        elsewhere: set[str] = set()
        for row in rows:
            inst = self._known.get(row["id"])
            if inst is None:
                inst = Instance(index=row["idx"], url=row["url"], secret=self.secrets.decrypt(row["secret"]))
                self._ids[inst] = (row["id"], row["secret"])
            inst.url, inst.ready, inst.restarts = row["url"], bool(row["ready"]), row["restarts"]
            if row.get("host") not in (None, self._host) and _loopback(row["url"]):
                elsewhere.add(row["id"])
            known[row["id"]] = inst
            by_key.setdefault((row["endpoint"], row["deployment"]), []).append(inst)
        for ident in self._known.keys() - known.keys():
            self._known[ident].retired = True
            self._unreachable.pop(ident, None)
        self._known, self._by_key, self._elsewhere = known, by_key, elsewhere
        self._read_at = time.monotonic()


def _loopback(url: str) -> bool:
    """An address only its own host reaches (a local placement's instances listen on 127.0.0.1)."""
    host = urlsplit(url).hostname or ""
    return host == "localhost" or host == "::1" or host.startswith("127.")


class LeaderSync:
    """The leader's pass, every SYNC_S on a thread of its own: reconcile the supervisor with the stored deployments
    (under the endpoint service's deployments `lock`; `forget` drops what is kept of one deleted elsewhere), publish
    its instances, and read the load the other servers' gateways published. It starts from an empty board."""

    def __init__(self, supervisor: DeploymentSupervisor, board: InstanceBoard, lock: threading.Lock,
                 stored: Callable[[], list[Deployment]], forget: Callable[[Key], None], server_id: str) -> None:
        self.supervisor, self.board, self.lock = supervisor, board, lock
        self.stored, self.forget, self.server_id = stored, forget, server_id
        self._stop = threading.Event()
        board.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name="forgeflow-deployments-sync")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def publish(self) -> None:
        """Publish now, not at the next pass (a deployment is about to read Succeeded: followers must find it)."""
        self.board.publish(self.supervisor, self.server_id)

    def _run(self) -> None:
        while not self._stop.wait(SYNC_S):
            try:
                with self.lock:
                    gone = reconcile(self.supervisor, self.stored)
                for key in gone:
                    self.forget(key)
                self.publish()
                # The other servers' gateways: their requests count for the autoscaler and for drains.
                self.supervisor.admission.set_others(gateway_loads(self.board.store, self.server_id))
            except Exception:  # a busy database must not end it for good
                log.exception("reconciling deployments with the store failed")
