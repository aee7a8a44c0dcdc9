"""Connections (Prompt flow's custom / open_ai kinds): configs in clear, secrets encrypted."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from forgeflow.errors import Conflict, InvalidInput, NotFound

if TYPE_CHECKING:  # the store (SQLAlchemy) loads only when a connection is read locally
    from forgeflow.store.workspace import Workspace

TYPES = ("custom", "open_ai", "azure_open_ai")
MASK = "******"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,127}")


class ConnectionStore:
    def __init__(self, ws: "Workspace") -> None:
        self.ws = ws
        self.store = ws.store

    def upsert(self, name: str, type: str, configs: dict, secrets: dict, *, replace: bool = False) -> dict:
        if not _NAME.fullmatch(name or ""):
            raise InvalidInput(f"invalid connection name {name!r}: letters, digits, '_' and '-', up to 128", field="name")
        if type not in TYPES:
            raise InvalidInput(f"connection type {type!r} is not one of {', '.join(TYPES)}", field="type")
        for where, values in (("configs", configs), ("secrets", secrets)):
            if not isinstance(values, dict) or not all(isinstance(v, (str, int, float, bool)) for v in values.values()):
                raise InvalidInput(f"{where} must map names to plain values", field=where)
        if type != "custom" and not str(secrets.get("api_key") or ""):
            raise InvalidInput(f"an {type} connection needs secrets.api_key (--set api_key=...)", field="api_key")
        existing = self.store.get("connections", name=name)
        if existing and not replace:
            raise Conflict(f"connection {name!r} already exists (use: forgeflow connection update)", field="name")
        from forgeflow.store.db import now

        blob = self.ws.secrets.encrypt(json.dumps({k: str(v) for k, v in secrets.items()}))
        configs = {k: str(v) for k, v in configs.items()}
        if existing:
            self.store.update("connections", {"name": name}, {"type": type, "configs": configs, "secrets": blob, "updated_at": now()})
        else:
            self.store.insert("connections", {"name": name, "type": type, "configs": configs, "secrets": blob,
                                              "created_at": now(), "updated_at": now()})
        return self.show(name)

    def show(self, name: str, *, with_secrets: bool = False) -> dict:
        row = self.store.get("connections", name=name)
        if row is None:
            raise NotFound(f"no connection named {name!r} (see: forgeflow connection list)", field="connection")
        secrets = json.loads(self.ws.secrets.decrypt(row["secrets"]))
        return {
            "name": row["name"], "type": row["type"], "configs": row["configs"],
            "secrets": secrets if with_secrets else {k: MASK for k in secrets},
            "created_at": row["created_at"], "updated_at": row["updated_at"],
        }

    def update(self, name: str, configs: dict | None = None, secrets: dict | None = None,
               remove: list[str] | None = None, type: str | None = None) -> dict:
        """Merge changes into an existing connection; `remove` drops keys (`configs.x`, `secrets.y` or `x`)."""
        current = self.show(name, with_secrets=True)
        merged = {"configs": dict(current["configs"]), "secrets": dict(current["secrets"])}
        for key in remove or []:
            section, dot, field = key.partition(".")
            targets = [section] if dot and section in merged else list(merged)
            field = field if dot and section in merged else key
            if not any(merged[t].pop(field, None) is not None for t in targets):
                raise InvalidInput(f"connection {name!r} has no field {key!r} to remove", field=key)
        merged["configs"].update(configs or {})
        merged["secrets"].update(secrets or {})
        return self.upsert(name, type or current["type"], merged["configs"], merged["secrets"], replace=True)

    def list(self) -> list[dict]:
        return [self.show(r["name"]) for r in self.store.select("connections", order_by="name")]

    def delete(self, name: str) -> None:
        if not self.store.delete("connections", {"name": name}):
            raise NotFound(f"no connection named {name!r}", field="connection")


def local_connection_lookup() -> Callable[[str], dict]:
    """Connections by name from this machine's workspace, decrypted, each read once (`${env:VAR}` values are
    kept: the flow engine resolves them when a node uses the connection).

    The workspace opens on the first lookup, so a flow that uses no connection never loads the database.
    """
    cache: dict[str, dict] = {}
    lock = threading.Lock()
    store: ConnectionStore | None = None

    def lookup(name: str) -> dict:
        nonlocal store
        with lock:
            if name not in cache:
                if store is None:
                    from forgeflow.store.workspace import Workspace

                    store = ConnectionStore(Workspace.open())
                cache[name] = store.show(name, with_secrets=True)
            return cache[name]

    return lookup
