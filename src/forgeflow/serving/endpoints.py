"""Online endpoints and their deployments: the rules (names, traffic, keys) and their state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forgeflow.errors import Conflict, InvalidInput, NotFound
from forgeflow.names import check_deployment_name, check_endpoint_name
from forgeflow.serving.supervisor import DeploymentSupervisor
from forgeflow.store.db import now
from forgeflow.store.secrets import new_key, same
from forgeflow.store.workspace import Workspace

DEFAULT_REQUEST_SETTINGS = {"request_timeout_ms": 90_000, "max_concurrent_requests_per_instance": 1}
MAX_INSTANCES = 8


class EndpointService:
    def __init__(self, ws: Workspace, supervisor: DeploymentSupervisor, base_url: str) -> None:
        self.ws = ws
        self.store = ws.store
        self.supervisor = supervisor
        self.base_url = base_url.rstrip("/")

    # -- endpoints -----------------------------------------------------------
    def create_endpoint(self, name: str, auth_mode: str = "key", description: str | None = None) -> dict:
        check_endpoint_name(name)
        if auth_mode != "key":
            raise InvalidInput(f"auth_mode {auth_mode!r} is not supported yet: use 'key'", field="auth_mode")
        if self.store.get("endpoints", name=name):
            raise Conflict(f"endpoint {name!r} already exists", field="name")
        box = self.ws.secrets
        self.store.insert("endpoints", {
            "name": name, "auth_mode": auth_mode,
            "primary_key": box.encrypt(new_key()), "secondary_key": box.encrypt(new_key()),
            "traffic": {}, "description": description, "created_at": now(),
        })
        return self.show_endpoint(name)

    def _endpoint_row(self, name: str) -> dict:
        row = self.store.get("endpoints", name=name)
        if row is None:
            raise NotFound(f"no endpoint named {name!r} (see: forgeflow online-endpoint list)", field="name")
        return row

    def show_endpoint(self, name: str) -> dict:
        row = self._endpoint_row(name)
        deps = self.list_deployments(name)
        states = {d["provisioning_state"] for d in deps}
        state = "Failed" if "Failed" in states else "Updating" if "Creating" in states else "Succeeded"
        return {
            "name": row["name"],
            "auth_mode": row["auth_mode"],
            "scoring_uri": f"{self.base_url}/endpoints/{name}/score",
            "openai_base_url": f"{self.base_url}/endpoints/{name}/v1",
            "traffic": row["traffic"],
            "provisioning_state": state,
            "deployments": [d["name"] for d in deps],
            "description": row["description"],
            "created_at": row["created_at"],
        }

    def list_endpoints(self) -> list[dict]:
        return [self.show_endpoint(r["name"]) for r in self.store.select("endpoints", order_by="created_at")]

    def delete_endpoint(self, name: str) -> None:
        self._endpoint_row(name)
        for dep in self.store.select("deployments", {"endpoint": name}):
            self.supervisor.stop(name, dep["name"])
        self.store.delete("deployments", {"endpoint": name})
        self.store.delete("endpoints", {"name": name})

    def set_traffic(self, name: str, traffic: dict[str, int]) -> dict:
        self._endpoint_row(name)
        known = {d["name"] for d in self.store.select("deployments", {"endpoint": name})}
        for dep, pct in traffic.items():
            if dep not in known:
                raise InvalidInput(f"traffic names deployment {dep!r}, which endpoint {name!r} does not have "
                                   f"(deployments: {', '.join(sorted(known)) or 'none'})", field="traffic")
            if not isinstance(pct, int) or not 0 <= pct <= 100:
                raise InvalidInput(f"traffic for {dep!r} must be a whole percentage 0-100, got {pct!r}", field="traffic")
        total = sum(traffic.values())
        if total not in (0, 100):
            raise InvalidInput(f"traffic must add up to 100 (or 0), it adds up to {total}", field="traffic")
        self.store.update("endpoints", {"name": name}, {"traffic": {k: v for k, v in traffic.items()}})
        return self.show_endpoint(name)

    def credentials(self, name: str) -> dict:
        row = self._endpoint_row(name)
        return {"primary_key": self.ws.secrets.decrypt(row["primary_key"]),
                "secondary_key": self.ws.secrets.decrypt(row["secondary_key"])}

    def check_key(self, name: str, presented: str | None) -> bool:
        keys = self.credentials(name)
        # both compared every time, so timing does not say which key matched
        ok_primary = same(presented, keys["primary_key"])
        ok_secondary = same(presented, keys["secondary_key"])
        return ok_primary or ok_secondary

    # -- deployments -----------------------------------------------------------
    def create_deployment(self, endpoint: str, name: str, model_ref: str, model_path: Path,
                          instance_count: int = 1, runtime: str = "transformers",
                          request_settings: dict[str, Any] | None = None) -> dict:
        self._endpoint_row(endpoint)
        check_deployment_name(name)
        if self.store.get("deployments", endpoint=endpoint, name=name):
            raise Conflict(f"deployment {name!r} already exists on endpoint {endpoint!r}", field="name")
        if not 1 <= int(instance_count) <= MAX_INSTANCES:
            raise InvalidInput(f"instance_count must be between 1 and {MAX_INSTANCES}", field="instance_count")
        if runtime != "transformers":
            raise InvalidInput(f"runtime {runtime!r} is not available: use 'transformers'", field="runtime")
        settings = dict(DEFAULT_REQUEST_SETTINGS)
        for key, value in (request_settings or {}).items():
            if key not in DEFAULT_REQUEST_SETTINGS:
                raise InvalidInput(f"unknown request setting {key!r}: valid are {', '.join(DEFAULT_REQUEST_SETTINGS)}",
                                   field=f"request_settings.{key}")
            if not isinstance(value, int) or value < 1:
                raise InvalidInput(f"request_settings.{key} must be a positive integer", field=f"request_settings.{key}")
            settings[key] = value
        row = {
            "endpoint": endpoint, "name": name, "model_ref": model_ref, "model_path": str(model_path),
            "runtime": runtime, "instance_count": int(instance_count), "request_settings": settings,
            "state": "Creating", "error": None, "created_at": now(),
        }
        self.store.insert("deployments", row)
        self.supervisor.launch(row)
        return self.show_deployment(endpoint, name)

    def _deployment_row(self, endpoint: str, name: str) -> dict:
        self._endpoint_row(endpoint)
        row = self.store.get("deployments", endpoint=endpoint, name=name)
        if row is None:
            raise NotFound(f"endpoint {endpoint!r} has no deployment {name!r}", field="name")
        return row

    def show_deployment(self, endpoint: str, name: str) -> dict:
        row = self._deployment_row(endpoint, name)
        return {
            "name": row["name"], "endpoint_name": row["endpoint"], "model": row["model_ref"],
            "model_path": row["model_path"], "runtime": row["runtime"], "instance_count": row["instance_count"],
            "request_settings": row["request_settings"], "provisioning_state": row["state"], "error": row["error"],
            "instances": [i.to_dict() for i in self.supervisor.instances(endpoint, name)],
            "created_at": row["created_at"],
        }

    def list_deployments(self, endpoint: str) -> list[dict]:
        self._endpoint_row(endpoint)
        return [self.show_deployment(endpoint, r["name"])
                for r in self.store.select("deployments", {"endpoint": endpoint}, order_by="created_at")]

    def delete_deployment(self, endpoint: str, name: str) -> None:
        self._deployment_row(endpoint, name)
        traffic = self._endpoint_row(endpoint)["traffic"]
        if traffic.get(name):
            raise Conflict(f"deployment {name!r} still takes {traffic[name]}% of traffic: "
                           f"move it first with: forgeflow online-endpoint update --name {endpoint} --traffic ...")
        self.supervisor.stop(endpoint, name)
        self.store.delete("deployments", {"endpoint": endpoint, "name": name})
        traffic.pop(name, None)
        self.store.update("endpoints", {"name": endpoint}, {"traffic": traffic})

    def deployment_logs(self, endpoint: str, name: str, lines: int = 100) -> str:
        self._deployment_row(endpoint, name)
        out = []
        for path in self.supervisor.log_paths(endpoint, name):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"==> {path.name} <==\n" + "\n".join(text))
        return "\n".join(out)
