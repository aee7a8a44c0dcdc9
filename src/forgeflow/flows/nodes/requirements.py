"""A flow's `environment`: check `python_requirements_txt`, apply `environment_variables` for a run."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from forgeflow.errors import InvalidInput

_checked: dict[tuple[str, int], None] = {}


def _provided_by_forgeflow(name: str) -> bool:
    name = name.lower().replace("_", "-")
    return name == "promptflow" or name.startswith("promptflow-")


def missing_requirements(path: Path) -> list[str]:
    """Lines of a requirements file that the running Python does not satisfy, each with the reason."""
    missing = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue  # comments and pip options (-r, --index-url, -e ...)
        try:
            req = Requirement(line)
        except InvalidRequirement:
            if "://" in line or line.startswith((".", "/")):
                continue  # URLs and local paths cannot be checked by name
            missing.append(f"{line} (not a valid requirement)")
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        if _provided_by_forgeflow(req.name):
            continue
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(f"{line} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            missing.append(f"{line} (installed: {have})")
    return missing


def check_requirements(path: Path | None) -> None:
    """Raise InvalidInput naming every unmet requirement; a file is checked once per mtime."""
    if path is None:
        return
    key = (str(path), os.stat(path).st_mtime_ns)
    if key in _checked:
        return
    missing = missing_requirements(path)
    if missing:
        names = " ".join(m.split(" (", 1)[0] for m in missing)
        raise InvalidInput(
            f"{path.name} needs packages this Python lacks: {'; '.join(missing)}. Install them with: "
            f"pip install {names}",
            field="environment.python_requirements_txt",
        )
    _checked[key] = None


_env_lock = threading.Lock()
_env_users: dict[str, list] = {}  # name -> [value before the first run, runs using it]


@contextmanager
def environment_variables(variables: dict[str, str]) -> Iterator[None]:
    """Set the flow's variables while at least one run uses them; restore the old values after.

    `os.environ` is process-wide: concurrent runs of flows setting the same variable to different
    values see the last one set.
    """
    if not variables:
        yield
        return
    with _env_lock:
        for name, value in variables.items():
            entry = _env_users.setdefault(name, [os.environ.get(name), 0])
            entry[1] += 1
            os.environ[name] = value
    try:
        yield
    finally:
        with _env_lock:
            for name in variables:
                entry = _env_users[name]
                entry[1] -= 1
                if entry[1] == 0:
                    del _env_users[name]
                    if entry[0] is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = entry[0]
