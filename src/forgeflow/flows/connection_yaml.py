"""Read Prompt flow connection YAML files (`type: custom`, and loosely `open_ai` / `azure_open_ai`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from forgeflow.errors import InvalidInput, NotFound
from forgeflow.store.connections import TYPES
from forgeflow.yamlfile import load_yaml
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_IGNORED = {"$schema", "name", "type", "module"}
_SECRET_FIELDS = {"api_key"}
# Where a plain `--set NAME=VALUE` goes for the typed connections (Prompt flow's field names).
TYPED_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "open_ai": {"secrets": ("api_key",), "configs": ("base_url", "organization")},
    "azure_open_ai": {"secrets": ("api_key",), "configs": ("api_base", "api_type", "api_version")},
}


def _scalars(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where} must be a mapping of names to values", field=where.rsplit(": ", 1)[-1])
    out = {}
    for key, value in raw.items():
        if isinstance(value, (dict, list)):
            raise InvalidInput(f"{where}.{key} must be a single value, not a {type(value).__name__}", field=str(key))
        out[str(key)] = "" if value is None else str(value)
    return out


def parse_connection(raw: Any, source: str = "connection") -> dict:
    """Validate a connection mapping and return {"name", "type", "configs", "secrets"}."""
    if not isinstance(raw, dict):
        raise InvalidInput(f"{source}: expected a mapping with name, type, configs, secrets")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(
            f"{source}: name {name!r} must be letters, digits, '_' or '-' (e.g. custom-phi3)", field="name"
        )
    type_ = raw.get("type")
    if type_ not in TYPES:
        raise InvalidInput(f"{source}: type {type_!r} is not one of {', '.join(TYPES)}", field="type")
    configs = _scalars(raw.get("configs"), f"{source}: configs")
    secrets = _scalars(raw.get("secrets"), f"{source}: secrets")
    if type_ == "custom":
        if not secrets:
            raise InvalidInput(f"{source}: a custom connection needs at least one entry under secrets", field="secrets")
        overlap = sorted(set(configs) & set(secrets))
        if overlap:
            raise InvalidInput(f"{source}: {overlap[0]!r} is in both configs and secrets", field=overlap[0])
    else:
        flat = _scalars({k: v for k, v in raw.items() if k not in _IGNORED | {"configs", "secrets"}}, source)
        secrets.update({k: v for k, v in flat.items() if k in _SECRET_FIELDS})
        configs.update({k: v for k, v in flat.items() if k not in _SECRET_FIELDS})
        if "api_key" not in secrets:
            raise InvalidInput(f"{source}: an {type_} connection needs api_key", field="api_key")
    return {"name": name, "type": type_, "configs": configs, "secrets": secrets}


def load_connection_yaml(path: Path | str) -> dict:
    """Read a Prompt flow connection YAML file; `${env:VAR}` values are kept as written."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"connection file {path} not found")
    return parse_connection(load_yaml(path.read_text(encoding="utf-8"), str(path)), str(path))


def apply_settings(conn: dict, pairs: dict[str, str], *, flag: str = "--set") -> dict:
    """Apply `configs.x=..`/`secrets.y=..` (or, for typed connections, plain field names) to `conn`."""
    fields = TYPED_FIELDS.get(conn.get("type") or "custom")
    for key, value in pairs.items():
        section, dot, name = key.partition(".")
        if dot and section in ("configs", "secrets") and name:
            conn.setdefault(section, {})[name] = value
            continue
        if fields and not dot:
            section = next((s for s, names in fields.items() if key in names), None)
            if section is None:
                known = ", ".join(n for names in fields.values() for n in names)
                raise InvalidInput(
                    f"{flag} {key}=...: an {conn['type']} connection takes {known} (or configs.NAME / secrets.NAME)",
                    field=key,
                )
            conn.setdefault(section, {})[key] = value
            continue
        raise InvalidInput(f"{flag} {key}=...: write configs.NAME=VALUE or secrets.NAME=VALUE", field=key)
    return conn
