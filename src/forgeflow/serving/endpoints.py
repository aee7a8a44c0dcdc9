"""Online endpoints and their deployments: the rules (names, traffic, mirror, keys, tokens,
settings) and their state. The service is the one writer of the `endpoints` and `deployments`
rows: the supervisor reports what happened to instances through it (`Reports`), and the autoscaler it owns
changes instance counts through it (`ScaleOwner`). The gateway reads
endpoints through `view()`, an in-memory view rebuilt after every change and at least every CONFIG_TTL_S (so a
key, auth mode or allowed_users changed through another server is seen within that): a request reads memory, and
the one that finds the view stale waits for its rebuild (a database read and decryption) on a worker thread, never
on the event loop. Only a user's personal access token (allowed_users, serving/access.py) is looked up in the
store at every request. The gateway asks `admission` whether a request may go ahead.

Of several servers on one database only the leader runs the supervisor and the autoscaler (`lead`); how a follower's
changes and requests reach the leader's instances is serving/instances.py's.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from starlette.concurrency import run_in_threadpool

from forgeflow.errors import Conflict, InvalidInput, NotFound
from forgeflow.names import check_deployment_name, check_endpoint_name
from forgeflow.serving import endpoint_hosts, specs
from forgeflow.serving.access import check_allowed_users
from forgeflow.serving.admission import Admission
from forgeflow.serving.auth import issue_token
from forgeflow.serving.autoscale import Autoscaler
from forgeflow.serving.changes import Resolve, changed_deployment, new_deployment
from forgeflow.serving.instances import InstanceBoard, LeaderSync
from forgeflow.serving.metrics import Metrics
from forgeflow.serving.placement import Instance, Placement
from forgeflow.serving.ray_placement import check_target
from forgeflow.serving.records import Deployment, EndpointConfig, Key
from forgeflow.serving.supervisor import DeploymentSupervisor
from forgeflow.store.db import now
from forgeflow.store.leadership import servers
from forgeflow.store.secrets import new_key
from forgeflow.store.states import DeploymentState
from forgeflow.store.workspace import Workspace
from forgeflow.training.compute.targets import ComputeTargets

MAX_DEPLOYMENTS = 20
AUTH_MODES = ("key", "token")
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
CONFIG_TTL_S = 1.0  # the longest a server serves an endpoint's view after another server changed it
_KEEP: Any = object()  # an update argument left out
SPLIT_TRIES = 5  # writes of a split that another request changed meanwhile, each on a fresh read


def _split_guard(row: dict) -> dict[str, str]:
    """The split as read, as a condition of the write: the write takes effect only if nobody changed it since."""
    return {col: json.dumps(row[col]) for col in ("traffic", "mirror_traffic") if row.get(col) is not None}


def _split_raced(name: str) -> Conflict:
    return Conflict(f"endpoint {name!r}'s traffic kept changing under this request (other requests changed it at the "
                    "same moment): read it again with forgeflow online-endpoint show and retry", field="traffic")


class EndpointService:
    def __init__(self, ws: Workspace, placement: Placement, base_url: str, domain: str | None = None,
                 ports: str | None = None) -> None:
        """`domain`: what endpoints' host names end in; `ports`: the ports endpoints may have, FIRST-LAST
        (serving/endpoint_hosts.py; from the environment or the defaults when not given)."""
        self.ws = ws
        self.store = ws.store
        self.placement = placement
        self.base_url = base_url.rstrip("/")
        self.domain = endpoint_hosts.check_domain(domain)
        self.ports = endpoint_hosts.check_port_range(ports)
        self.metrics = Metrics()
        self.admission = Admission()
        self.supervisor = DeploymentSupervisor(placement, self, self.admission)
        self.autoscaler = Autoscaler(self, self.supervisor, self.admission, self.metrics)
        self._deployments_lock = threading.Lock()  # an update and an autoscaling change read and write one count
        self._cache: dict[str, EndpointConfig] = {}
        self._cache_lock = threading.Lock()
        self._loading = threading.Lock()
        self._version = 0  # bumped by every change, so a view read before a change is never cached after it
        self.board = InstanceBoard(ws.store, ws.secrets)
        self.leading = True  # runs the supervisor; False on a server that follows another (serving/instances.py)
        self._sync: LeaderSync | None = None
        self.metrics.gauge("forgeflow_pending_requests", lambda: {
            Metrics.labels(endpoint=e, deployment=d): float(n) for (e, d), n in self.admission.all_pending().items()})
        self.metrics.gauge("forgeflow_ready_instances", lambda: {
            Metrics.labels(endpoint=e, deployment=d): float(n)
            for (e, d), n in self.supervisor.ready_counts().items()})

    def start(self) -> None:
        """Bring every stored deployment back up (server start), after stopping any instance an earlier server
        left running."""
        self.placement.stop_leftovers()
        for row in self.store.select("deployments"):
            dep = Deployment.from_row(row)
            if dep.state != DeploymentState.DELETING:
                self._write_deployment(dep.key, {"state": DeploymentState.CREATING, "error": None})
                self.supervisor.launch(dep.replace(state=DeploymentState.CREATING, error=None))
        self.autoscaler.start()

    def lead(self, server_id: str) -> None:
        """This server now leads: bring every stored deployment up here (`start`), then keep the supervisor in step
        with the store and publish its instances (`LeaderSync`)."""
        self.leading = True
        self.board.unfollow()
        self.start()
        self._sync = LeaderSync(self.supervisor, self.board, self._deployments_lock, self._stored, self._forget,
                                server_id)

    def follow(self) -> None:
        """This server follows another: its gateway forwards to the instances the leader publishes, read on a
        thread of their own until it leads."""
        self.leading = False
        self.board.follow()

    def shutdown(self) -> None:
        self.board.unfollow()
        if self._sync is not None:
            self._sync.stop()
        self.autoscaler.stop()
        self.supervisor.shutdown()

    def ready_instances(self, key: Key) -> list[Instance]:
        """Where the gateway may send a request: the supervisor's ready instances, or on a follower the leader's."""
        return self.supervisor.ready_instances(*key) if self.leading else self.board.ready(key)

    def ready_instances_now(self, key: Key) -> list[Instance]:
        """`ready_instances`, on a follower after reading the leader's board again (blocking): for a request that
        found none, since the board may lag the leader by READ_CACHE_S."""
        return self.supervisor.ready_instances(*key) if self.leading else self.board.refresh(key)

    def mark_unready(self, inst: Instance) -> None:
        """The gateway could not connect to the instance: route around it until a probe says otherwise."""
        (self.supervisor.mark_unready if self.leading else self.board.mark_unreachable)(inst)

    # -- the gateway's view ------------------------------------------------------
    def config(self, name: str) -> EndpointConfig:
        """The endpoint's view, rebuilt from the store when older than CONFIG_TTL_S (blocking: see `view`)."""
        cfg = self._fresh(name)
        if cfg is None:
            with self._loading:  # one rebuild at a time: requests that found it stale together then find it fresh
                cfg = self._fresh(name) or self._load(name)
        return cfg

    async def view(self, name: str) -> EndpointConfig:
        """`config` for the gateway: from memory while fresh, else rebuilt on a worker thread."""
        return self._fresh(name) or await run_in_threadpool(self.config, name)

    def _fresh(self, name: str) -> EndpointConfig | None:
        cfg = self._cache.get(name)
        return cfg if cfg is not None and time.monotonic() - cfg.loaded_at <= CONFIG_TTL_S else None

    def _load(self, name: str) -> EndpointConfig:
        version = self._version
        row = self._endpoint_row(name)
        deps = {d["name"]: Deployment.from_row(d) for d in self.store.select("deployments", {"endpoint": name})}
        cfg = EndpointConfig(name=name, auth_mode=row["auth_mode"],
                             primary=self.ws.secrets.decrypt(row["primary_key"]),
                             secondary=self.ws.secrets.decrypt(row["secondary_key"]),
                             traffic=row["traffic"] or {}, mirror=row.get("mirror_traffic") or {},
                             max_body_bytes=row.get("max_body_bytes"), deployments=deps,
                             allowed_users=row.get("allowed_users"))
        with self._cache_lock:
            if version == self._version:
                self._cache[name] = cfg
        return cfg

    def _changed(self, name: str) -> None:
        with self._cache_lock:
            self._version += 1
            self._cache.pop(name, None)

    # -- endpoints -----------------------------------------------------------
    def create_endpoint(self, name: str, auth_mode: str = "key", description: str | None = None,
                        max_body_bytes: int | None = None, allowed_users: list[str] | None = None,
                        port: int | None = None) -> dict:
        check_endpoint_name(name)
        if auth_mode not in AUTH_MODES:
            raise InvalidInput(f"auth_mode {auth_mode!r} is not supported: use 'key' or 'token'", field="auth_mode")
        specs.check_body_limit(max_body_bytes)
        allowed_users = check_allowed_users(self.ws.identity, allowed_users)
        specs.check_users_mode(allowed_users, auth_mode)
        if self.store.get("endpoints", name=name):
            raise Conflict(f"endpoint {name!r} already exists", field="name")
        port = self._free_port(name, port)
        box = self.ws.secrets
        with endpoint_hosts.port_clash(port, lambda: self.store.get("endpoints", name=name) is None):
            self.store.insert("endpoints", {
                "name": name, "auth_mode": auth_mode,
                "primary_key": box.encrypt(new_key()), "secondary_key": box.encrypt(new_key()),
                "traffic": {}, "mirror_traffic": {}, "max_body_bytes": max_body_bytes,
                "description": description, "created_at": now(), "allowed_users": allowed_users, "port": port,
            })
        self._changed(name)
        return self.show_endpoint(name)

    def _endpoint_row(self, name: str) -> dict:
        row = self.store.get("endpoints", name=name)
        if row is None:
            raise NotFound(f"no endpoint named {name!r} (see: forgeflow online-endpoint list)", field="name")
        return row

    def show_endpoint(self, name: str, names: list[str] | None = None) -> dict:
        """`names`: every endpoint's (read here when not given), for whose its host name is."""
        row = self._endpoint_row(name)
        deps = self.list_deployments(name)
        states = {d["provisioning_state"] for d in deps}
        state = (DeploymentState.FAILED if DeploymentState.FAILED in states
                 else DeploymentState.UPDATING if states & {DeploymentState.CREATING, DeploymentState.UPDATING}
                 else DeploymentState.SUCCEEDED)
        return {
            "name": row["name"],
            "auth_mode": row["auth_mode"],
            "scoring_uri": f"{self.base_url}/endpoints/{name}/score",
            "openai_base_url": f"{self.base_url}/endpoints/{name}/v1",
            **endpoint_hosts.scoring_urls(self.base_url, self.domain, name, row.get("port"),
                                          self.addresses() if names is None else names),
            "traffic": row["traffic"],
            "mirror_traffic": row.get("mirror_traffic") or {},
            "max_body_bytes": row.get("max_body_bytes"),
            "allowed_users": row.get("allowed_users"),
            "provisioning_state": state,
            "deployments": [d["name"] for d in deps],
            "description": row["description"],
            "created_at": row["created_at"],
        }

    def addresses(self) -> dict[str, int | None]:
        """Every endpoint's name and its own port (None: none), for the servers' host and port routing."""
        return {row["name"]: row.get("port") for row in self.store.select("endpoints")}

    def _free_port(self, name: str, port: Any) -> int | None:
        """`port` checked, and free: no other endpoint has it, and no live server of the workspace listens there."""
        port = endpoint_hosts.check_port(port, self.ports)
        if port is not None:
            urls = [self.base_url] + [s["url"] for s in servers(self.store) if s["alive"]]
            endpoint_hosts.check_port_free(port, name, self.store.select("endpoints"), urls)
        return port

    def list_endpoints(self) -> list[dict]:
        names = [r["name"] for r in self.store.select("endpoints", order_by="created_at")]
        return [self.show_endpoint(name, names) for name in names]

    def delete_endpoint(self, name: str) -> None:
        with self._deployments_lock:  # no autoscaling change between the stop and the rows going
            self._endpoint_row(name)
            deps = [(name, d["name"]) for d in self.store.select("deployments", {"endpoint": name})]
            for key in deps:
                self.supervisor.stop(*key)
            self.store.delete("deployments", {"endpoint": name})
            self.store.delete("endpoints", {"name": name})
            self._changed(name)
        for key in deps:  # after: a change that won the lock first has logged its event by now
            self._forget(key)

    def update_endpoint(self, name: str, *, traffic: dict[str, int] | None = None,
                        mirror_traffic: dict[str, int] | None = None, description: str | None = None,
                        max_body_bytes: int | None = None, auth_mode: str | None = None,
                        allowed_users: list[str] | None = _KEEP, port: int | None = _KEEP) -> dict:
        """Change what is given; `allowed_users=None` or `port=None` clears it, left out it stays. Only the columns
        given are written, and the split only if it is still the one read (`_split_guard`): two requests at once
        never undo each other's change."""
        if auth_mode is not None and auth_mode not in AUTH_MODES:
            raise InvalidInput(f"auth_mode {auth_mode!r} is not supported: use 'key' or 'token'", field="auth_mode")
        if max_body_bytes is not None:
            specs.check_body_limit(max_body_bytes)
        for _ in range(SPLIT_TRIES):
            row = self._endpoint_row(name)
            users = (row.get("allowed_users") if allowed_users is _KEEP
                     else check_allowed_users(self.ws.identity, allowed_users))
            specs.check_users_mode(users, auth_mode or row["auth_mode"])
            values: dict[str, Any] = {} if allowed_users is _KEEP else {"allowed_users": users}
            where: dict[str, Any] = {"name": name}
            if traffic is not None or mirror_traffic is not None:
                new_traffic = row["traffic"] if traffic is None else traffic
                new_mirror = (row.get("mirror_traffic") or {}) if mirror_traffic is None else mirror_traffic
                known = {d["name"] for d in self.store.select("deployments", {"endpoint": name})}
                values |= {"traffic": dict(new_traffic),
                           "mirror_traffic": specs.check_traffic(name, new_traffic, new_mirror, known)}
                where |= _split_guard(row)
            if port is not _KEEP:
                values["port"] = self._free_port(name, port)
            if description is not None:
                values["description"] = description
            if max_body_bytes is not None:
                values["max_body_bytes"] = max_body_bytes
            if auth_mode is not None and auth_mode != row["auth_mode"]:
                # Fresh secrets: no key of the old mode keeps working, and no old key can sign tokens.
                box = self.ws.secrets
                values |= {"auth_mode": auth_mode, "primary_key": box.encrypt(new_key()),
                           "secondary_key": box.encrypt(new_key())}
            if not values:
                return self.show_endpoint(name)
            with endpoint_hosts.port_clash(values.get("port")):  # another server gave it to another endpoint meanwhile
                if self.store.update("endpoints", where, values):
                    break
        else:
            raise _split_raced(name)
        self._changed(name)
        return self.show_endpoint(name)

    def credentials(self, name: str) -> dict:
        cfg = self.config(name)
        if cfg.auth_mode == "token":
            return issue_token(cfg.primary, name)
        return {"primary_key": cfg.primary, "secondary_key": cfg.secondary}

    def regenerate_keys(self, name: str, key_type: str) -> dict:
        """A fresh primary or secondary key; the old one stops working at once (in token mode,
        a new primary key revokes every token issued)."""
        self._endpoint_row(name)
        if key_type not in ("primary", "secondary"):
            raise InvalidInput(f"key_type must be 'primary' or 'secondary', got {key_type!r}", field="key_type")
        self.store.update("endpoints", {"name": name}, {f"{key_type}_key": self.ws.secrets.encrypt(new_key())})
        self._changed(name)
        return self.credentials(name)

    # -- deployments -----------------------------------------------------------
    def create_deployment(self, endpoint: str, name: str, model_ref: str, model_path: str | os.PathLike,
                          instance_count: int | None = None, runtime: str = "transformers",
                          request_settings: dict[str, Any] | None = None,
                          liveness_probe: dict[str, Any] | None = None,
                          readiness_probe: dict[str, Any] | None = None,
                          scale_settings: dict[str, Any] | None = None, compute: str | None = None,
                          resources: dict[str, Any] | None = None, gguf_type: str | None = None,
                          adapters: dict[str, str] | None = None) -> dict:
        """The model as the API layer found it: its reference and folder, or with `adapters` (NAME:VERSION ->
        LoRA adapter folder) the base model's (serving/changes.py)."""
        self._endpoint_row(endpoint)
        check_deployment_name(name)
        if self.store.get("deployments", endpoint=endpoint, name=name):
            raise Conflict(f"deployment {name!r} already exists on endpoint {endpoint!r}", field="name")
        if len(self.store.select("deployments", {"endpoint": endpoint})) >= MAX_DEPLOYMENTS:
            raise Conflict(f"endpoint {endpoint!r} already has {MAX_DEPLOYMENTS} deployments, the most it can have")
        dep = new_deployment(endpoint, name, (model_ref, model_path, adapters or {}),
                             instance_count=instance_count, runtime=runtime, request_settings=request_settings,
                             liveness_probe=liveness_probe, readiness_probe=readiness_probe,
                             scale_settings=scale_settings, compute=compute, resources=resources, gguf_type=gguf_type,
                             target=self._placement_target)
        with self._deployments_lock:  # the leader's reconcile pass must not launch it a second time
            self.store.insert("deployments", dep.row())
            self._changed(endpoint)
            if self.leading:
                self.supervisor.launch(dep)
        return self.show_deployment(endpoint, name)

    def update_deployment(self, endpoint: str, name: str, sets: dict[str, Any],
                          resolve: Resolve | None = None) -> dict:
        """Change any field with `path=value` pairs; processes roll only when they must."""
        with self._deployments_lock:  # an autoscaling change reads and writes the same count
            self._update_deployment(endpoint, name, sets, resolve)
        return self.show_deployment(endpoint, name)

    def _update_deployment(self, endpoint: str, name: str, sets: dict[str, Any], resolve: Resolve | None) -> None:
        old = self._deployment(endpoint, name)
        if old.state in (DeploymentState.CREATING, DeploymentState.UPDATING):
            raise Conflict(f"deployment {name!r} is {old.state}: wait until it settles, then update it")
        new = changed_deployment(old, sets, resolve, self._placement_target)
        # only over the state it was read in: of two servers updating it at once, one rolls and the other is told
        if not self.store.update("deployments", {"endpoint": endpoint, "name": name, "state": old.state},
                                 new.spec() | {"state": new.state, "error": None, "updated_at": new.updated_at}):
            raise Conflict(f"deployment {name!r} was changed meanwhile (it is no longer {old.state}): show it, "
                           "then update it again")
        self._changed(endpoint)
        if self.leading:
            self.supervisor.update(old, new)

    def _placement_target(self, compute: str, given_resources: dict[str, Any]) -> dict:
        """The compute target, once it exists (404 naming `compute`) and can run the deployment. A local target
        reserves nothing for an instance, so resources given for one are refused (400 naming the resource)."""
        target = ComputeTargets(self.store).get(compute)
        if target["type"] == "local":
            if given_resources:
                key, value = next(iter(given_resources.items()))
                raise InvalidInput(f"resources.{key}={value}: compute target {target['name']!r} is this machine, "
                                   "where an instance reserves nothing; resources are for a cluster target "
                                   "(--compute NAME, see: forgeflow compute list)", field=f"resources.{key}")
        else:
            check_target(target)
        return target

    def _deployment(self, endpoint: str, name: str) -> Deployment:
        self._endpoint_row(endpoint)
        row = self.store.get("deployments", endpoint=endpoint, name=name)
        if row is None:
            raise NotFound(f"endpoint {endpoint!r} has no deployment {name!r}", field="name")
        return Deployment.from_row(row)

    def _write_deployment(self, key: Key, values: dict[str, Any]) -> None:
        self.store.update("deployments", {"endpoint": key[0], "name": key[1]}, values)
        self._changed(key[0])

    def show_deployment(self, endpoint: str, name: str) -> dict:
        dep = self._deployment(endpoint, name)
        return {
            "name": dep.name, "endpoint_name": dep.endpoint,
            **({"model": dep.models, "base_model": dep.model_ref, "adapters": dep.adapters} if dep.adapters
               else {"model": dep.model_ref}),
            "model_path": dep.model_path, "runtime": dep.runtime, "gguf_type": dep.gguf_type,
            "instance_count": dep.instance_count, "request_settings": dep.request_settings,
            "liveness_probe": dep.liveness_probe, "readiness_probe": dep.readiness_probe,
            "scale_settings": dep.scale_settings, "scale_events": self.autoscaler.events(dep.key),
            "compute": dep.compute, "resources": dep.resources,
            "provisioning_state": dep.state, "error": dep.error,
            "instances": [{"index": i.index, **(self.placement.describe(i) if self.leading else {"url": i.url}),
                           "ready": i.ready, "inflight": self.admission.in_flight(i), "restarts": i.restarts}
                          for i in (self.supervisor.instances(endpoint, name) if self.leading
                                    else self.board.instances(dep.key))],
            "created_at": dep.created_at, "updated_at": dep.updated_at,
        }

    def list_deployments(self, endpoint: str) -> list[dict]:
        self._endpoint_row(endpoint)
        return [self.show_deployment(endpoint, r["name"])
                for r in self.store.select("deployments", {"endpoint": endpoint}, order_by="created_at")]

    def delete_deployment(self, endpoint: str, name: str) -> None:
        with self._deployments_lock:  # no autoscaling change between the stop and the row going
            self._delete_deployment(endpoint, name)
        self._forget((endpoint, name))  # after: a change that won the lock first has logged its event by now

    def _forget(self, key: Key) -> None:
        """A deleted deployment: what the autoscaler and the placement keep of it goes."""
        self.autoscaler.forget(key)
        self.placement.forget(*key)

    def _delete_deployment(self, endpoint: str, name: str) -> None:
        self._deployment(endpoint, name)
        ep = self._endpoint_row(endpoint)
        traffic, mirror = ep["traffic"], ep.get("mirror_traffic") or {}
        if traffic.get(name):
            raise Conflict(f"deployment {name!r} still takes {traffic[name]}% of traffic: "
                           f"move it first with: forgeflow online-endpoint update --name {endpoint} --traffic ...")
        if mirror.get(name):
            raise Conflict(f"deployment {name!r} still takes {mirror[name]}% of mirrored traffic: "
                           f"stop it first with: forgeflow online-endpoint update --name {endpoint} --mirror-traffic {name}=0")
        self.supervisor.stop(endpoint, name)
        self.store.delete("deployments", {"endpoint": endpoint, "name": name})
        for _ in range(SPLIT_TRIES):  # its zero entries out of the split, as it is now
            if self.store.update("endpoints", {"name": endpoint} | _split_guard(ep), {
                    "traffic": {k: v for k, v in (ep["traffic"] or {}).items() if k != name},
                    "mirror_traffic": {k: v for k, v in (ep.get("mirror_traffic") or {}).items() if k != name}}):
                break
            ep = self._endpoint_row(endpoint)
        self._changed(endpoint)

    def deployment_logs(self, endpoint: str, name: str, lines: int = 100) -> str:
        self._deployment(endpoint, name)
        if lines < 1:
            raise InvalidInput("lines must be at least 1", field="lines")
        return self.placement.logs(endpoint, name, lines)

    # -- what the supervisor reports (Reports) ------------------------------------------
    def deployment_succeeded(self, key: Key) -> None:
        if self._sync is not None:  # followers find its instances the moment they read Succeeded
            self._sync.publish()
        self._write_deployment(key, {"state": DeploymentState.SUCCEEDED, "error": None})

    def deployment_failed(self, key: Key, reason: str, *, restored: Deployment | None = None) -> None:
        values: dict[str, Any] = {"state": DeploymentState.FAILED, "error": reason}
        if restored is not None:
            values |= restored.spec()
        self._write_deployment(key, values)

    def instance_restarted(self, key: Key) -> None:
        self.metrics.inc("forgeflow_instance_restarts_total", Metrics.labels(endpoint=key[0], deployment=key[1]))

    # -- what the autoscaler asks (ScaleOwner) ----------------------------------------------
    def autoscaled(self) -> list[Deployment]:
        return [d for d in self._stored() if d.autoscaled and d.state == DeploymentState.SUCCEEDED]

    def _stored(self) -> list[Deployment]:
        return [Deployment.from_row(row) for row in self.store.select("deployments")]

    def scale_deployment(self, key: Key, expected: int, count: int) -> bool:
        with self._deployments_lock:
            row = self.store.get("deployments", endpoint=key[0], name=key[1])
            dep = Deployment.from_row(row) if row else None
            if (dep is None or not dep.autoscaled or dep.state != DeploymentState.SUCCEEDED
                    or dep.instance_count != expected):
                return False
            specs.instance_count(count, dep.scale_settings)
            # The pool first: when its instances cannot start, the row keeps the count the pool has, so the
            # next wake or poll asks again. A follower's wake only writes the count, which the leader applies.
            if self.leading:
                self.supervisor.scale(dep.replace(instance_count=count))
            self._write_deployment(key, {"instance_count": count})
        return True
