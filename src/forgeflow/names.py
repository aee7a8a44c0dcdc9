"""Name rules shared by the CLI, the REST API and the store, and the one way a name goes into a REST path."""

from __future__ import annotations

import re
from urllib.parse import quote

from forgeflow.errors import InvalidInput

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


def parse_model_ref(ref: str) -> tuple[str, str | None]:
    """`name:3`, `name@latest`, `azureml:name:3` or `name` -> (name, version or None for latest)."""
    ref = (ref or "").strip()
    if ref.startswith("azureml:"):
        ref = ref[len("azureml:"):]
    if "@" in ref:
        name, label = ref.split("@", 1)
        if label != "latest":
            raise InvalidInput(f"model reference {ref!r}: only the label @latest is known", field="model")
        return name, None
    if ":" in ref:
        name, version = ref.rsplit(":", 1)
        if not version.isdigit():
            raise InvalidInput(f"model reference {ref!r}: the version after ':' must be a number", field="model")
        return name, version
    return ref, None


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
