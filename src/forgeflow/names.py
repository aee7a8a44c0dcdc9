"""Name rules shared by the CLI, the REST API and the store, the one way a name goes into a REST path, and the one
way a file or folder path a client sends is read."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

from forgeflow.errors import InvalidInput, shorten

_ENDPOINT = re.compile(r"[A-Za-z][A-Za-z0-9-]{2,31}")
_GENERIC = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_endpoint_name(name: str, field: str = "name") -> str:
    if not _ENDPOINT.fullmatch(name or "") or name.endswith("-"):
        raise InvalidInput(
            f"invalid endpoint name {name!r}: use 3-32 characters, a letter first, then letters, digits and dashes "
            "(no trailing dash)",
            field=field,
        )
    return name


def check_deployment_name(name: str, field: str = "name") -> str:
    if not _ENDPOINT.fullmatch(name or "") or name.endswith("-"):
        raise InvalidInput(
            f"invalid deployment name {name!r}: use 3-32 characters, a letter first, then letters, digits and dashes",
            field=field,
        )
    return name


def check_name(name: str, what: str, field: str = "name") -> str:
    if not _GENERIC.fullmatch(name or ""):
        raise InvalidInput(
            f"invalid {what} name {name!r}: use up to 128 letters, digits, '.', '_' and '-', starting with a letter or digit",
            field=field,
        )
    return name


LATEST = "latest"  # `NAME@latest`: the newest live version, never an alias anyone sets
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_VERSION_ALIAS = re.compile(r"[vV][0-9]+")  # MLflow keeps `v3` for version 3


class ModelRef(NamedTuple):
    """A model reference read: `version` set for `NAME:VERSION`, `alias` for `NAME@ALIAS`, neither for `NAME` or
    `NAME@latest` (the newest live version)."""

    name: str
    version: str | None = None
    alias: str | None = None


def check_alias(alias: str, field: str = "alias") -> str:
    """A registry alias (`champion`): 1-64 letters, digits, '_' and '-', a letter first; not `latest` (`@latest`
    already means the newest live version) nor `v` and a number (MLflow keeps those for versions)."""
    alias = alias or ""
    if alias.lower() == LATEST:
        raise InvalidInput(f"alias {alias!r} is reserved: NAME@latest is always the newest live version; choose "
                           "another name, e.g. champion", field=field)
    if _VERSION_ALIAS.fullmatch(alias):
        raise InvalidInput(f"alias {alias!r} is reserved: MLflow keeps v<number> for versions (use NAME:VERSION); "
                           "choose another name, e.g. champion", field=field)
    if not _ALIAS.fullmatch(alias):
        raise InvalidInput(f"invalid alias {alias!r}: use 1-64 letters, digits, '_' and '-', a letter first "
                           "(e.g. champion)", field=field)
    return alias


def parse_model_ref(ref: str) -> ModelRef:
    """`name:3`, `name@champion`, `name@latest`, `azureml:name:3` or `name`, read as a `ModelRef` (the registry
    finds which version an alias names)."""
    ref = (ref or "").strip()
    if ref.startswith("azureml:"):
        ref = ref[len("azureml:"):]
    if "@" in ref:
        name, label = ref.split("@", 1)
        if label == LATEST:
            return ModelRef(name)
        try:
            return ModelRef(name, alias=check_alias(label, field="model"))
        except InvalidInput as e:
            raise InvalidInput(f"model reference {ref!r}: {e.message}", field="model") from e
    if ":" in ref:
        name, version = ref.rsplit(":", 1)
        if not version.isdigit():
            raise InvalidInput(f"model reference {ref!r}: the version after ':' must be a number", field="model")
        return ModelRef(name, version)
    return ModelRef(ref)


def parse_assignments(items: list[str] | None, option: str, example: str) -> dict[str, str]:
    """`NAME=VALUE` command-line items (`--set lr=2e-4`, `--inputs q=hi`) into a dict, in order, later ones winning.

    The one parser for every such option: the name is stripped and must not be empty; the value is kept as written
    (callers that take typed values convert them). A bad item is InvalidInput naming the option and an example."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InvalidInput(f"{option} {item!r}: expected NAME=VALUE, e.g. {option} {example}",
                               field=option.lstrip("-").replace("-", "_"))
        out[name.strip()] = value
    return out


def url_path(*segments: object) -> str:
    """A REST path from its segments, each quoted whole (the one way the CLI and the client put a name in a path):
    a name holding '?', '#' or '%', or one that is '.' or '..', stays one segment and never reaches another route
    (`user delete ../tokens/ID`). A '/' is refused: the server decodes %2F before it routes, and no name holds one."""
    return "".join("/" + _segment(str(s)) for s in segments)


def _segment(text: str) -> str:
    if "/" in text:
        raise InvalidInput(f"{text!r} is no name: names never hold '/'")
    # "." and ".." are dot segments a client library resolves away; spelled %2E they stay a name
    return text.replace(".", "%2E") if text in (".", "..") else quote(text, safe="")


def client_path(text: str, field: str) -> Path:
    """The absolute path of a file or folder a client names, `~` expanded. A path no filesystem can hold (a NUL, a
    name or path past the system's limit, a loop of links) is a 400 naming `field`, never an error later: once this
    returns, asking whether the path is a file or a folder answers yes or no."""
    what = f"{field.replace('_', ' ')} {shorten(repr(text), 120)}"
    if "\x00" in text:
        raise InvalidInput(f"{what} holds a NUL character, which no path may: name an existing file or folder",
                           field=field)
    try:
        path = Path(text).expanduser().resolve()
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # nothing there: the caller says what it expected
        return path
    except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: expanduser of an unknown user
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InvalidInput(f"{what} is not a usable path ({reason}): name an existing file or folder on the "
                           "server's machine", field=field) from None
    return path
