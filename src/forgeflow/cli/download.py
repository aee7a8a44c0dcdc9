"""`model download`: fetch a registered version's files over the REST API, with a byte progress bar.

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
from forgeflow.errors import Conflict
from forgeflow.names import url_path

CHUNK = 1 << 20


def download_version(c: Client, name: str, version: str, out: Path, *, quiet: bool = False, console: Any = None) -> dict:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise Conflict(f"{out} already exists and is not empty: choose another --out or remove it", field="out")
    listing = c.get(url_path("api", "models", name, "versions", version, "files"))
    stage = out.parent / f".{out.name}.partial"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    total = listing["total_bytes"]
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      TimeRemainingColumn(), console=console, disable=quiet) as bar:
            task = bar.add_task(f"{name}:{version}", total=total)
            for f in listing["files"]:
                target = stage / f["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                bar.update(task, description=f"{name}:{version} {f['path']}")
                files = url_path("api", "models", name, "versions", version, "files")
                path = f"{files}/{quote(f['path'])}"  # a file's own path keeps its slashes
                _fetch(c, path, target, lambda n: bar.advance(task, n))
        if out.exists():
            out.rmdir()
        stage.rename(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {"name": name, "version": version, "path": str(out), "files": len(listing["files"]), "bytes": total}


def _fetch(c: Client, path: str, target: Path, advance: Callable[[int], Any]) -> None:
    with c.stream("GET", path) as resp, open(target, "wb") as fh:
        for chunk in resp.iter_bytes(CHUNK):
            fh.write(chunk)
            advance(len(chunk))
