"""The workspace's datasets: chat files kept under FORGEFLOW_HOME/datasets, one file per dataset.

A dataset's name is its file name (`train.jsonl`); a job's training_data is the dataset's path. Uploads are
written to a temporary file and moved into place only when complete, so a cut connection or an oversized body
leaves nothing behind and never replaces a good file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from forgeflow.data.validate import preview_rows, row_check, validate_file
from forgeflow.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from forgeflow.names import check_name

FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
DEFAULT_MAX_BYTES = 1 << 30
MAX_PROBLEMS = 200


def max_upload_bytes() -> int:
    return int(os.environ.get("FORGEFLOW_MAX_DATASET_BYTES") or DEFAULT_MAX_BYTES)


@lru_cache(maxsize=256)
def _row_count(path: str, mtime: float, size: int) -> int:
    return preview_rows(Path(path), 0, 0)[1]


class DatasetLibrary:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- names and listing ---------------------------------------------------------
    def path_of(self, name: str) -> Path:
        check_name(name, "dataset")
        if Path(name).suffix.lower() not in FORMATS:
            raise InvalidInput(f"dataset name {name!r} needs one of the extensions {', '.join(FORMATS)} "
                               "(e.g. train.jsonl)", field="name")
        return self.root / name

    def _existing(self, name: str) -> Path:
        path = self.path_of(name)
        if not path.is_file():
            raise NotFound(f"no dataset {name!r}: see GET /api/datasets or upload one")
        return path

    def info(self, path: Path) -> dict[str, Any]:
        st = path.stat()
        try:
            rows: int | None = _row_count(str(path), st.st_mtime, st.st_size)
        except Exception:  # an unreadable file still lists; its validation says why
            rows = None
        return {"name": path.name, "path": str(path), "format": FORMATS[path.suffix.lower()], "bytes": st.st_size,
                "rows": rows, "modified": datetime.fromtimestamp(st.st_mtime, timezone.utc).isoformat(timespec="seconds")}

    def list(self) -> list[dict[str, Any]]:
        if not self.root.is_dir():
            return []
        files = [p for p in self.root.iterdir() if p.is_file() and p.suffix.lower() in FORMATS
                 and not p.name.startswith(".")]
        return [self.info(p) for p in sorted(files, key=lambda p: p.name)]

    def show(self, name: str, method: str = "sft") -> dict[str, Any]:
        """The dataset's info and its validation as training data of `method` (sft: chat rows, dpo: preference
        rows)."""
        path = self._existing(name)
        return self.info(path) | {"validation": validation_view(path, method)}

    def rows(self, name: str, offset: int = 0, limit: int = 20, method: str = "sft") -> dict[str, Any]:
        if offset < 0 or not 1 <= limit <= 200:
            raise InvalidInput("offset must be >= 0 and limit between 1 and 200", field="limit")
        shown, total = preview_rows(self._existing(name), offset, limit, method)
        return {"name": name, "offset": offset, "total": total, "method": method, "rows": shown}

    def delete(self, name: str) -> None:
        self._existing(name).unlink()

    # -- writing ---------------------------------------------------------------------
    async def upload(self, name: str, chunks: AsyncIterator[bytes], *, overwrite: bool = False) -> Path:
        """Stream a request body into the dataset file; refused past max_upload_bytes() with nothing kept."""
        path = self.path_of(name)
        if path.exists() and not overwrite:
            raise Conflict(f"dataset {name!r} exists: upload with overwrite=true to replace it", field="name")
        limit = max_upload_bytes()
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".upload-{uuid.uuid4().hex}.tmp"
        size = 0
        try:
            with tmp.open("wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(f"dataset upload over {limit} bytes (FORGEFLOW_MAX_DATASET_BYTES)")
                    f.write(chunk)
            if size == 0:
                raise InvalidInput("empty upload: send the file's bytes as the request body", field="body")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def prepare(self, dataset: str, prefix: str, *, test_size: float = 0.2, seed: int = 42,
                overwrite: bool = False) -> dict[str, Any]:
        """`forgeflow data prepare` into the library: `<prefix>_train.jsonl` and `<prefix>_test.jsonl`."""
        from forgeflow.data.prepare import prepare_dataset

        check_name(prefix, "dataset prefix", field="prefix")
        targets = {"train": self.path_of(f"{prefix}_train.jsonl"), "test": self.path_of(f"{prefix}_test.jsonl")}
        taken = [p.name for p in targets.values() if p.exists()]
        if taken and not overwrite:
            raise Conflict(f"dataset {taken[0]!r} exists: choose another prefix or overwrite=true", field="prefix")
        self.root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".prepare-", dir=self.root))
        try:
            result = prepare_dataset(dataset, work, test_size=test_size, seed=seed)
            os.replace(result.train_path, targets["train"])
            os.replace(result.test_path, targets["test"])
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return {"source": result.source, "total_rows": result.total_rows,
                "train": self.show(targets["train"].name), "test": self.show(targets["test"].name)}


def validation_view(path: Path, method: str = "sft") -> dict[str, Any]:
    """validate_file's report for `method` with problems as objects (line, unit, message), for the API."""
    row_check(method)  # an unknown method is the caller's error, not the file's
    try:
        report = validate_file(path, max_problems=MAX_PROBLEMS, method=method)
    except (InvalidInput, NotFound) as exc:  # the whole file is unreadable (bad JSON array, CSV header ...)
        return {"ok": False, "method": method, "rows": 0, "good_rows": 0, "bad_rows": 0, "truncated": False,
                "fits_method": None, "problems": [{"line": 0, "unit": "file", "message": exc.message}]}
    out = {"method": method} | report.to_dict()
    out.pop("path")
    out["problems"] = [{"line": p.line, "unit": p.unit, "message": p.message} for p in report.problems]
    return out
