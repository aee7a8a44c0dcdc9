"""Many fine-tunes on one base model: the LoRA adapters an instance serves, which one a request names, and
which are loaded.

An instance started with adapters (`--adapter tuned-a:1=PATH`, one per registered version) loads its base
model once; each adapter is a PEFT LoRA folder (a registered version's `adapter/`). A request picks one by
its `model` (OpenAI: `tuned-a:1`, or `tuned-a` when one version of that name is served) or, when the body names no
`model` (always on `/score`), the `x-forgeflow-model` header; anything else (no model, the deployment's name, a name served nowhere here) gets
the first adapter listed, as the gateway serves a `model` naming no deployment by its traffic split.
Adapters load on first use and the least recently used one not in use is let go past `max_loaded`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from forgeflow.errors import InvalidInput, NotFound
from forgeflow.names import parse_model_ref

MODEL_HEADER = "x-forgeflow-model"  # names a fine-tune when the body names no `model` (/score's way; any route)
DEFAULT_MAX_LOADED = 8

H = TypeVar("H")


def parse_adapter_arg(value: str) -> tuple[str, Path]:
    """`NAME:VERSION=PATH` (the model server's `--adapter`) as (name, path)."""
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise InvalidInput(f"--adapter takes NAME:VERSION=PATH, got {value!r}", field="adapter")
    if ":" not in name:
        raise InvalidInput(f"--adapter {name!r}: name the registered version, as NAME:VERSION", field="adapter")
    return name, Path(path)


def match_adapter(model: str | None, names: list[str]) -> str | None:
    """The adapter among `names` (each `NAME:VERSION`) that a request's `model` names, or None when it names
    none of them. `model` is read as a deploy command reads a model reference (`azureml:NAME:VERSION`,
    `NAME@latest`, spaces around it); one that is no model reference (`gpt-4o-mini:beta`) names none. `NAME`
    alone matches when exactly one version of it is among `names`, `NAME@latest` the highest served; a version
    of a served name that is not served is a 404, and a name served in several versions, or a served name's
    alias (`tuned@champion`), a 400 asking for NAME:VERSION."""
    if not model or not names:
        return None
    if model in names:
        return model
    try:
        name, version, alias = parse_model_ref(model)
    except InvalidInput:
        return None  # not a model reference: a model served elsewhere (gpt-4) or a deployment's name
    versions = [n for n in names if n.rpartition(":")[0] == name]
    if not versions:
        return None
    if alias:  # resolved when a deployment is created, never per request: the alias may have moved since
        raise InvalidInput(f"model {model!r} names a registry alias, which is read when a deployment is created, "
                           f"not per request: name the version, as NAME:VERSION ({name} is served here as "
                           f"{', '.join(versions)})", field="model")
    if version:
        if f"{name}:{version}" in versions:
            return f"{name}:{version}"
        raise NotFound(f"model {model!r} is not served here: {name} is served as {', '.join(versions)}",
                       field="model")
    if "@" in model:  # NAME@latest: the highest version served
        return max(versions, key=lambda n: int(n.rpartition(":")[2]) if n.rpartition(":")[2].isdigit() else -1)
    if len(versions) > 1:
        raise InvalidInput(f"model {name!r} is served in several versions: name one of {', '.join(versions)}",
                           field="model")
    return versions[0]


class AdapterCatalog:
    """The adapters one instance serves (name -> PEFT folder), in the order given: the first is the default."""

    def __init__(self, adapters: dict[str, Path] | None = None) -> None:
        self.paths: dict[str, Path] = dict(adapters or {})
        for name, path in self.paths.items():
            if not (Path(path) / "adapter_config.json").is_file():
                raise NotFound(f"adapter {name}: {path} has no adapter_config.json (a PEFT LoRA folder)",
                               field="adapter")

    @property
    def names(self) -> list[str]:
        return list(self.paths)

    def resolve(self, model: str | None) -> str | None:
        """The adapter a request's `model` picks; None when this instance serves no adapters."""
        if not self.paths:
            return None
        return match_adapter(model, self.names) or self.names[0]

    def match(self, model: str | None) -> str | None:
        """The served adapter `model` names (`NAME` alone for its one version served), or None."""
        return match_adapter(model, self.names)


class LoadedAdapters(Generic[H]):
    """Which adapters are loaded in a runtime: `acquire` loads one on first use (through `load`) and marks it in
    use; `release` ends a use. Past `max_loaded`, the least recently used adapters not in use are let go
    (through `unload`); adapters in use are never let go, so for a while more than `max_loaded` may be held.
    Thread-safe; `load` and `unload` run under the lock (the runtimes call them from their one worker thread)."""

    def __init__(self, load: Callable[[str], H], unload: Callable[[str, H], None], *,
                 max_loaded: int = DEFAULT_MAX_LOADED) -> None:
        if max_loaded < 1:
            raise InvalidInput(f"max_adapters must be at least 1, got {max_loaded}", field="max_adapters")
        self._load, self._unload, self.max_loaded = load, unload, max_loaded
        self._held: OrderedDict[str, H] = OrderedDict()  # least recently used first
        self._uses: dict[str, int] = {}
        self._lock = threading.Lock()
        self.loads = 0
        self.evictions = 0

    def acquire(self, name: str) -> H:
        with self._lock:
            handle = self._held.get(name)
            if handle is None:
                handle = self._load(name)
                self._held[name] = handle
                self.loads += 1
            self._held.move_to_end(name)
            self._uses[name] = self._uses.get(name, 0) + 1
            self._evict()
            return handle

    def release(self, name: str) -> None:
        with self._lock:
            left = self._uses.get(name, 0) - 1
            if left > 0:
                self._uses[name] = left
            else:
                self._uses.pop(name, None)
            self._evict()

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"loaded": list(self._held), "in_use": dict(self._uses), "max_loaded": self.max_loaded,
                    "loads": self.loads, "evictions": self.evictions}

    def clear(self) -> None:
        """Let every adapter go (at close)."""
        with self._lock:
            while self._held:
                name, handle = self._held.popitem(last=False)
                self._unload(name, handle)
            self._uses.clear()

    def _evict(self) -> None:
        for name in list(self._held):
            if len(self._held) <= self.max_loaded:
                return
            if self._uses.get(name):
                continue
            self._unload(name, self._held.pop(name))
            self.evictions += 1
