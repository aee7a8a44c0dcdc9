"""Stand-ins for the parts of Prompt flow that tool code imports.

`install_promptflow_shim()` makes `from promptflow import tool`,
`from promptflow.core import tool, log_metric` and
`from promptflow.connections import CustomConnection, OpenAIConnection, AzureOpenAIConnection`
work when the promptflow package is not installed. A real promptflow, when present, is always left
alone, and tools annotated with its connection classes receive instances of those real classes.
"""

from __future__ import annotations

import contextvars
import importlib.machinery
import importlib.util
import inspect
import os
import re
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

from forgeflow.errors import InvalidInput

TOOL_MARK = "__forgeflow_tool__"
SHIM_MARK = "__forgeflow_shim__"
SECRET_MASK = "******"

_metrics: contextvars.ContextVar[list[dict] | None] = contextvars.ContextVar("forgeflow_metrics", default=None)


def tool(func: Callable | None = None, /, **kwargs: Any) -> Callable:
    """Mark a function as a flow tool; usable as `@tool` and `@tool(name=..., ...)`."""

    def mark(f: Callable) -> Callable:
        setattr(f, TOOL_MARK, dict(kwargs))
        return f

    return mark(func) if func is not None else mark


def trace(func: Callable | None = None, /, **_: Any) -> Callable:
    """Prompt flow's tracing decorator; tracing is not recorded, the function is unchanged."""
    return func if func is not None else (lambda f: f)


def is_tool(obj: Any) -> bool:
    """True for functions marked by this `tool` or by a real promptflow `tool`."""
    return callable(obj) and (hasattr(obj, TOOL_MARK) or hasattr(obj, "__original_function"))


def log_metric(key: str, value: float, variant_id: str | None = None) -> None:
    """Record a metric into the current flow run; outside a run it does nothing."""
    sink = _metrics.get()
    if sink is not None:
        sink.append({"key": str(key), "value": value, "variant_id": variant_id})


def start_metrics() -> tuple[list[dict], contextvars.Token]:
    """Open a metric sink for a run; pass the token to `stop_metrics` when the run ends."""
    sink: list[dict] = []
    return sink, _metrics.set(sink)


def stop_metrics(token: contextvars.Token) -> None:
    _metrics.reset(token)


class CustomConnection:
    """A Prompt flow custom connection: `configs` and `secrets`, both readable as attributes.

    Secrets win when a key is in both, as in Prompt flow; `repr` never shows a secret value.
    """

    def __init__(self, configs: dict | None = None, secrets: dict | None = None, name: str | None = None) -> None:
        object.__setattr__(self, "_configs", dict(configs or {}))
        object.__setattr__(self, "_secrets", dict(secrets or {}))
        object.__setattr__(self, "name", name)

    @property
    def configs(self) -> dict:
        return self._configs

    @property
    def secrets(self) -> dict:
        return self._secrets

    @property
    def type(self) -> str:
        return "custom"

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"connection {self.name or ''!s} has no config or secret {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        if key == "name":
            object.__setattr__(self, key, value)
        elif key in self._secrets:
            self._secrets[key] = value
        else:
            self._configs[key] = value

    def __getitem__(self, key: str) -> Any:
        if key in self._secrets:
            return self._secrets[key]
        return self._configs[key]

    def __contains__(self, key: object) -> bool:
        return key in self._secrets or key in self._configs

    def __iter__(self) -> Iterator[str]:
        yield from {**self._configs, **self._secrets}

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def is_secret(self, key: str) -> bool:
        return key in self._secrets

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CustomConnection):
            return NotImplemented
        return (self.name, self._configs, self._secrets) == (other.name, other._configs, other._secrets)

    def __repr__(self) -> str:
        masked = {k: SECRET_MASK for k in self._secrets}
        return f"CustomConnection(name={self.name!r}, configs={self._configs!r}, secrets={masked!r})"

    __str__ = __repr__


class _KeyedConnection(CustomConnection):
    """Base of the typed connections: fixed attribute names, stored as configs and secrets."""

    TYPE = ""
    SECRETS: tuple[str, ...] = ("api_key",)

    def __init__(self, name: str | None = None, **fields: Any) -> None:
        fields = {k: v for k, v in fields.items() if v is not None}
        secrets = {k: v for k, v in fields.items() if k in self.SECRETS}
        configs = {k: v for k, v in fields.items() if k not in self.SECRETS}
        super().__init__(configs=configs, secrets=secrets, name=name)

    @property
    def type(self) -> str:
        return self.TYPE

    def __repr__(self) -> str:
        masked = {k: SECRET_MASK for k in self._secrets}
        return f"{type(self).__name__}(name={self.name!r}, configs={self._configs!r}, secrets={masked!r})"

    __str__ = __repr__


class OpenAIConnection(_KeyedConnection):
    """Prompt flow's OpenAIConnection: `api_key`, `organization`, `base_url`."""

    TYPE = "open_ai"

    def __init__(self, api_key: str, organization: str | None = None, base_url: str | None = None,
                 name: str | None = None, **extra: Any) -> None:
        super().__init__(name=name, api_key=api_key, organization=organization,
                         base_url=base_url or "https://api.openai.com/v1", **extra)

    def __getattr__(self, key: str) -> Any:
        if key == "organization":
            return self.get(key)
        return super().__getattr__(key)


class AzureOpenAIConnection(_KeyedConnection):
    """Prompt flow's AzureOpenAIConnection: `api_key`, `api_base`, `api_type`, `api_version`."""

    TYPE = "azure_open_ai"

    def __init__(self, api_key: str, api_base: str, api_type: str = "azure", api_version: str = "2024-02-01",
                 name: str | None = None, **extra: Any) -> None:
        super().__init__(name=name, api_key=api_key, api_base=api_base, api_type=api_type,
                         api_version=api_version, **extra)


CONNECTION_CLASSES = {"CustomConnection": "custom", "OpenAIConnection": "open_ai", "AzureOpenAIConnection": "azure_open_ai"}


def connection_kind(annotation: Any) -> str | None:
    """"custom" / "open_ai" / "azure_open_ai" when `annotation` is a (shim or real) connection class."""
    if isinstance(annotation, str):
        return CONNECTION_CLASSES.get(annotation.rsplit(".", 1)[-1])
    if not isinstance(annotation, type):
        return None
    if issubclass(annotation, CustomConnection):
        return CONNECTION_CLASSES.get(annotation.__name__, "custom")
    if annotation.__module__.startswith("promptflow"):
        return CONNECTION_CLASSES.get(annotation.__name__)
    return None


def make_connection(found: dict, annotation: Any) -> Any:
    """Build the object a tool asked for from a stored connection {name, type, configs, secrets}.

    A real promptflow class gets the keyword arguments its constructor takes.
    """
    configs, secrets = dict(found.get("configs") or {}), dict(found.get("secrets") or {})
    name = found.get("name")
    kind = connection_kind(annotation) or "custom"
    cls = annotation if isinstance(annotation, type) else {
        "custom": CustomConnection, "open_ai": OpenAIConnection, "azure_open_ai": AzureOpenAIConnection}[kind]
    if kind == "custom":
        return cls(configs=configs, secrets=secrets, name=name)
    fields = {**configs, **secrets}
    if kind == "azure_open_ai":
        fields.setdefault("api_base", fields.get("base_url") or fields.get("endpoint") or "")
    if kind == "open_ai" and "base_url" not in fields and fields.get("endpoint"):
        fields["base_url"] = fields["endpoint"]
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        fields = {k: v for k, v in fields.items() if k in params}
    return cls(name=name, **fields)


_ENV = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


def resolve_env_refs(conn: dict, where: str) -> dict:
    """A copy of a connection with `${env:VAR}` values replaced by the variable's value."""
    def fix(section: str) -> dict:
        out = {}
        for key, value in (conn.get(section) or {}).items():
            m = _ENV.fullmatch(value.strip()) if isinstance(value, str) else None
            if m:
                if m.group(1) not in os.environ:
                    raise InvalidInput(f"{where}: {section}.{key} reads ${{env:{m.group(1)}}} but it is not set", field=key)
                value = os.environ[m.group(1)]
            out[key] = value
        return out

    return {**conn, "configs": fix("configs"), "secrets": fix("secrets")}


def _module(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name, "forgeflow stand-in for Prompt flow")
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    mod.__path__ = []
    setattr(mod, SHIM_MARK, True)
    for key, value in attrs.items():
        setattr(mod, key, value)
    return mod


def shim_installed() -> bool:
    return getattr(sys.modules.get("promptflow"), SHIM_MARK, False)


def install_promptflow_shim() -> bool:
    """Register the stand-in `promptflow` modules unless a real promptflow is importable.

    Returns True when the shim is (now or already) in place. Idempotent.
    """
    if shim_installed():
        return True
    if "promptflow" in sys.modules or importlib.util.find_spec("promptflow") is not None:
        return False
    core = _module("promptflow.core", tool=tool, log_metric=log_metric)
    connections = _module(
        "promptflow.connections",
        CustomConnection=CustomConnection,
        OpenAIConnection=OpenAIConnection,
        AzureOpenAIConnection=AzureOpenAIConnection,
    )
    tracing = _module("promptflow.tracing", trace=trace)
    root = _module(
        "promptflow",
        tool=tool,
        log_metric=log_metric,
        trace=trace,
        core=core,
        connections=connections,
        tracing=tracing,
    )
    for mod in (core, connections, tracing, root):
        sys.modules[mod.__name__] = mod
    return True


def uninstall_promptflow_shim() -> None:
    """Remove the stand-in modules (a real promptflow is never touched)."""
    for name in ("promptflow.core", "promptflow.connections", "promptflow.tracing", "promptflow"):
        if getattr(sys.modules.get(name), SHIM_MARK, False):
            del sys.modules[name]
