"""Batch-run records under the home: `runs/NAME/` holds meta.json, lines.jsonl, metrics.json.

Line results are appended to lines.jsonl as each line finishes (one JSON object per line,
flushed), so a run killed half way keeps what it finished and can be resumed.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from forgeflow.errors import Conflict, InvalidInput, NotFound
from forgeflow.flows.result import jsonable
from forgeflow.store.home import home_dir

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
RESERVED = frozenset({"compare"})  # a REST route beside the runs' own: /api/flow-runs/compare


def runs_root() -> Path:
    return home_dir() / "runs"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_name(flow_dir: Path, variant_id: str | None = None) -> str:
    """`<flow folder>[_<variant id>]_<UTC timestamp>`, like Prompt flow's default run names."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", Path(flow_dir).resolve().name)[:60] or "flow"
    if variant_id:
        stem += "_" + (re.sub(r"[^A-Za-z0-9_-]", "_", variant_id)[:40] or "variant")
    return f"{stem}_{datetime.now(timezone.utc).strftime('%Y%m%d_%H%M%S_%f')}"


@dataclass
class RunRecord:
    """One batch run's folder."""

    name: str
    dir: Path

    @classmethod
    def create(cls, name: str, meta: dict) -> "RunRecord":
        if not _NAME.fullmatch(name):
            raise InvalidInput(f"invalid run name {name!r}: letters, digits, '_', '-', '.' up to 128", field="name")
        if name in RESERVED:
            raise InvalidInput(f"run name {name!r} is reserved (GET /api/flow-runs/{name}); choose another", field="name")
        run_dir = runs_root() / name
        try:
            run_dir.mkdir(parents=True)
        except FileExistsError:
            raise Conflict(f"a run named {name!r} already exists (see: forgeflow flow run show {name})",
                           field="name") from None
        rec = cls(name, run_dir)
        rec.write_meta({"name": name, **meta})
        (run_dir / "lines.jsonl").touch()
        return rec

    @classmethod
    def open(cls, name: str) -> "RunRecord":
        run_dir = runs_root() / name
        if not _NAME.fullmatch(name or "") or not (run_dir / "meta.json").is_file():
            raise NotFound(f"no flow run named {name!r} (see: forgeflow flow run list)", field="run")
        return cls(name, run_dir)

    @classmethod
    def all(cls) -> list["RunRecord"]:
        root = runs_root()
        if not root.is_dir():
            return []
        return [cls(p.name, p) for p in sorted(root.iterdir()) if (p / "meta.json").is_file()]

    # -- meta ------------------------------------------------------------------
    def meta(self) -> dict:
        return json.loads((self.dir / "meta.json").read_text(encoding="utf-8"))

    def write_meta(self, meta: dict) -> None:
        tmp = self.dir / "meta.json.tmp"
        tmp.write_text(json.dumps(jsonable(meta), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.dir / "meta.json")

    def update_meta(self, **changes: Any) -> dict:
        meta = {**self.meta(), **changes}
        self.write_meta(meta)
        return meta

    # -- lines -----------------------------------------------------------------
    def lines(self) -> list[dict]:
        """Finished lines, last result per line number, in line order (a torn last line is skipped)."""
        by_number: dict[int, dict] = {}
        path = self.dir / "lines.jsonl"
        if path.exists():
            for raw in path.read_text(encoding="utf-8").splitlines():
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(line, dict) and isinstance(line.get("line_number"), int):
                    by_number[line["line_number"]] = line
        return [by_number[n] for n in sorted(by_number)]

    def compact(self) -> list[dict]:
        """Rewrite lines.jsonl with only whole, latest results (before a resume appends to it)."""
        lines = self.lines()
        tmp = self.dir / "lines.jsonl.tmp"
        tmp.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, self.dir / "lines.jsonl")
        return lines

    def writer(self) -> "LineWriter":
        return LineWriter(self.dir / "lines.jsonl")

    # -- metrics ---------------------------------------------------------------
    def metrics(self) -> dict:
        path = self.dir / "metrics.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def write_metrics(self, metrics: dict) -> None:
        (self.dir / "metrics.json").write_text(json.dumps(jsonable(metrics), indent=2) + "\n", encoding="utf-8")


class LineWriter:
    """Appends line results from many threads; each write is flushed to the OS at once."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._file = open(path, "a", encoding="utf-8")

    def write(self, line: dict) -> None:
        text = json.dumps(jsonable(line), ensure_ascii=False) + "\n"
        with self._lock:
            self._file.write(text)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()
