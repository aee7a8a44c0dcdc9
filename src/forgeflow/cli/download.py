"""`model download` and `model export`: fetch a registered version's files over the REST API, with a byte progress bar.

Files go to a hidden sibling folder first and it is renamed into place at the end, so an
interrupted download never leaves a half model at --out.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from forgeflow.client import Client
from forgeflow.errors import Conflict, InvalidInput
from forgeflow.names import url_path

CHUNK = 1 << 20


def download_version(c: Client, name: str, version: str, out: Path, *, quiet: bool = False, console: Any = None) -> dict:
    listing = c.get(url_path("api", "models", name, "versions", version, "files"))
    download_files(c, name, version, listing["files"], out, quiet=quiet, console=console)
    return {"name": name, "version": version, "path": str(out), "files": len(listing["files"]),
            "bytes": listing["total_bytes"]}


def download_files(c: Client, name: str, version: str, files: list[dict], out: Path, *, quiet: bool = False,
                   console: Any = None) -> Path:
    """Download files of a version's folder (`path`, `size`, and `target` under `out`, by default `path`) into
    the new folder `out`."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise Conflict(f"{out} already exists and is not empty: choose another --out or remove it", field="out")
    stage = out.parent / f".{out.name}.partial"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    base = url_path("api", "models", name, "versions", version, "files")
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      TimeRemainingColumn(), console=console, disable=quiet) as bar:
            task = bar.add_task(f"{name}:{version}", total=sum(f["size"] for f in files))
            for f in files:
                target = (stage / f.get("target", f["path"])).resolve()
                if not target.is_relative_to(stage.resolve()):
                    raise InvalidInput(f"the server listed a file outside the output folder: {f.get('target')!r}",
                                       field="out")
                target.parent.mkdir(parents=True, exist_ok=True)
                bar.update(task, description=f"{name}:{version} {f['path']}")
                path = f"{base}/{quote(f['path'])}"  # a file's own path keeps its slashes
                _fetch(c, path, target, lambda n: bar.advance(task, n))
        if out.exists():
            out.rmdir()
        stage.rename(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


def _fetch(c: Client, path: str, target: Path, advance: Callable[[int], Any]) -> None:
    with c.stream("GET", path) as resp, open(target, "wb") as fh:
        for chunk in resp.iter_bytes(CHUNK):
            fh.write(chunk)
            advance(len(chunk))
