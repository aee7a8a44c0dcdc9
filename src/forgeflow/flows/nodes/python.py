"""Import python-node tools once per flow and call them with resolved inputs and connections.

Importing puts the flow's folders on `sys.path` for a moment and takes sibling modules out of
`sys.modules` again, so one flow's `helper.py` never shadows another's. Both mutate process-wide
state, so imports hold `IMPORT_LOCK`; a tool is imported again only when one of the files it loaded
changes (mtime), which keeps per-line cost in a batch to a few `stat` calls.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import sys
import threading
import traceback
import typing
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from types import ModuleType
from typing import Any

from forgeflow.errors import ForgeflowError, InvalidInput, NotFound, UpstreamError
from forgeflow.flows import compat
from forgeflow.flows.contract import ConnectionProvider

IMPORT_LOCK = threading.RLock()
_counter = itertools.count()
_modules: dict[tuple[Path, str], tuple[ModuleType, tuple[tuple[str, int], ...]]] = {}


def _mtimes(files: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    out = []
    for f in files:
        try:
            out.append((f, os.stat(f).st_mtime_ns))
        except OSError:
            out.append((f, -1))
    return tuple(out)


def _fresh(stamps: tuple[tuple[str, int], ...]) -> bool:
    return _mtimes(tuple(f for f, _ in stamps)) == stamps


def import_file(path: Path, roots: tuple[Path, ...], where: str) -> ModuleType:
    """Import `path` (roots on sys.path while it runs), cached until a file it loaded changes."""
    key = (roots[0], str(path))
    hit = _modules.get(key)
    if hit is not None and _fresh(hit[1]):
        return hit[0]
    with IMPORT_LOCK:
        hit = _modules.get(key)
        if hit is not None and _fresh(hit[1]):
            return hit[0]
        compat.install_promptflow_shim()
        root_strs = [str(r) for r in roots]
        prefixes = tuple(r + os.sep for r in root_strs)
        mod_name = f"_forgeflow_tool_{path.stem}_{next(_counter)}"
        before = set(sys.modules)
        sys.path[:0] = root_strs
        loaded = [str(path)]
        try:
            spec = spec_from_file_location(mod_name, path)
            assert spec is not None and spec.loader is not None
            module = module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        except ForgeflowError:
            raise
        except BaseException as exc:
            err = UpstreamError(f"{where}: importing {path.name} failed: {exc!r}", field=where)
            err.details = traceback.format_exc()
            raise err from exc
        finally:
            for r in root_strs:
                if r in sys.path:
                    sys.path.remove(r)
            for name in set(sys.modules) - before:
                mod_file = getattr(sys.modules[name], "__file__", None) or ""
                if name == mod_name or mod_file.startswith(prefixes):
                    if mod_file and name != mod_name:
                        loaded.append(mod_file)
                    del sys.modules[name]
        _modules[key] = (module, _mtimes(tuple(loaded)))
        return module


@dataclass
class Tool:
    """A tool function with its signature worked out once."""

    func: Callable
    params: dict[str, inspect.Parameter]
    takes_kwargs: bool
    required: tuple[str, ...]
    connections: dict[str, Any]  # param -> annotation of connection-typed params
    is_async: bool


_tools: dict[int, Tool] = {}


def describe(func: Callable) -> Tool:
    hit = _tools.get(id(func))
    if hit is not None and hit.func is func:
        return hit
    params = dict(inspect.signature(func).parameters)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    hints = _annotations(func)
    tool = Tool(
        func=func,
        params=params,
        takes_kwargs=any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()),
        required=tuple(k for k, p in params.items() if p.default is inspect.Parameter.empty and p.kind in kinds),
        connections={k: hints.get(k) for k in params if compat.connection_kind(hints.get(k))},
        is_async=inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func),
    )
    _tools[id(func)] = tool
    return tool


def load_tool(node: Any, roots: tuple[Path, ...]) -> Tool:
    """The one @tool function of a python node's file."""
    module = import_file(node.path, roots, f"node {node.name!r}")
    own = getattr(module, "__forgeflow_tool_cache__", None)
    if own is None:
        tools = [obj for obj in vars(module).values() if compat.is_tool(obj)]
        mine = [t for t in tools if getattr(t, "__module__", None) == module.__name__]
        own = mine or tools
        module.__forgeflow_tool_cache__ = own
    if len(own) != 1:
        found = ", ".join(getattr(t, "__name__", "?") for t in own) if own else "none"
        raise InvalidInput(
            f"node {node.name!r}: {node.path.name} must have exactly one function decorated with @tool (found {found})",
            field=f"{node.name}.source.path",
        )
    return describe(own[0])


def _annotations(func: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - unresolvable hints fall back to raw annotations
        return {k: p.annotation for k, p in inspect.signature(func).parameters.items()}


def fetch_connection(name: str, provider: ConnectionProvider | None, where: str, field: str) -> dict:
    """The connection dict {name, type, configs, secrets} from the provider, `${env:VAR}` resolved."""
    hint = f"create it with: forgeflow connection create --name {name} ..."
    if provider is None:
        raise NotFound(f"{where}: connection {name!r} not found (no connection store); {hint}", field=field)
    try:
        found = provider(name)
    except NotFound as exc:
        raise NotFound(f"{where}: connection {name!r} not found: {exc.message}; {hint}", field=field) from exc
    except KeyError:
        found = None
    if not found:
        raise NotFound(f"{where}: connection {name!r} not found; {hint}", field=field)
    return compat.resolve_env_refs(found, f"{where}: connection {name!r}")


def connection_object(node_name: str, param: str, value: Any, annotation: Any, provider: ConnectionProvider | None) -> Any:
    if not isinstance(value, str):
        return value
    found = fetch_connection(value, provider, f"node {node_name!r}", param)
    return compat.make_connection(found, annotation)


def call_tool(node: Any, tool: Tool, kwargs: dict[str, Any], provider: ConnectionProvider | None) -> Any:
    """Check inputs against the signature, resolve connections, call; async tools are awaited."""
    for key in kwargs:
        if key not in tool.params and not tool.takes_kwargs:
            raise InvalidInput(
                f"node {node.name!r}: input {key!r} is not a parameter of {tool.func.__name__}({', '.join(tool.params)})",
                field=f"{node.name}.inputs.{key}",
            )
    for key in tool.required:
        if key not in kwargs:
            raise InvalidInput(
                f"node {node.name!r}: missing input {key!r} for {tool.func.__name__}", field=f"{node.name}.inputs.{key}"
            )
    for key, annotation in tool.connections.items():
        if key in kwargs:
            kwargs[key] = connection_object(node.name, key, kwargs[key], annotation, provider)
    result = tool.func(**kwargs)
    if inspect.isawaitable(result):
        result = asyncio.run(_await(result))
    elif inspect.isasyncgen(result):
        result = asyncio.run(_collect(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


async def _collect(agen: Any) -> list:
    return [item async for item in agen]
