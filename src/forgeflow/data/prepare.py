"""Step 1 of the walkthrough: load a chat dataset, split it train/test, write two JSONL files.

Sources, tried in this order:

- ``sample``: the dataset shipped with forgeflow (`quillfeather.jsonl`).
- an existing local file (``.jsonl``, ``.json``, ``.csv``, ``.parquet``) or a directory holding
  such files (all of one format, searched recursively), read with `datasets`' builders;
- anything else is a dataset name on the Hugging Face hub (or in the local HF cache when offline),
  loaded with ``datasets.load_dataset(name, config, split=split)`` as ``download_dataset.py`` does.

Split rule: a local file or directory has exactly one split, ``train``. A ``--split`` such as
``train_sft[:1%]`` or ``train[:100]`` is applied to it by keeping the slice (``[:1%]``) and
ignoring the name, so the walkthrough's split string works on the sample and on local files.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from forgeflow.data.sample import SAMPLE_NAME, SAMPLE_PATH
from forgeflow.errors import InvalidInput, NotFound

TRAIN_FILE = "train_data.jsonl"
TEST_FILE = "test_data.jsonl"

BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_SPLIT = re.compile(r"^\s*(?P<name>[\w.-]*)\s*(?P<slice>\[[^\]]*\])?\s*$")


@dataclass(frozen=True)
class PrepareResult:
    """What `prepare_dataset` wrote."""

    train_path: Path
    test_path: Path
    total_rows: int
    train_rows: int
    test_rows: int
    source: str

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["train_path"] = str(self.train_path)
        data["test_path"] = str(self.test_path)
        return data


def prepare_dataset(
    dataset: str,
    out_dir: Path,
    *,
    config: str | None = None,
    split: str | None = None,
    test_size: float = 0.2,
    seed: int = 42,
) -> PrepareResult:
    """Load `dataset`, split it reproducibly (`seed`) and write train/test JSONL into `out_dir`."""
    _check_test_size(test_size)
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInput(f"--out {out_dir}: exists and is not a directory", field="out")

    local = _local_files(dataset)
    if local is not None:
        builder, files = local
        source = SAMPLE_NAME if dataset == SAMPLE_NAME else str(Path(dataset).expanduser().resolve())
        rows = _load_local(builder, files, _local_split(split), source)
    else:
        source = dataset
        rows = _load_hub(dataset, config, split)

    total = len(rows)
    if total < 2:
        raise InvalidInput(f"{source}: {total} row(s); a train/test split needs at least 2", field="dataset")
    n_test = _test_count(test_size, total)
    split_rows = rows.train_test_split(test_size=n_test, seed=seed, keep_in_memory=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    train_path, test_path = out_dir / TRAIN_FILE, out_dir / TEST_FILE
    _write_jsonl(split_rows["train"], train_path)
    _write_jsonl(split_rows["test"], test_path)
    return PrepareResult(
        train_path=train_path,
        test_path=test_path,
        total_rows=total,
        train_rows=len(split_rows["train"]),
        test_rows=len(split_rows["test"]),
        source=source,
    )


def _check_test_size(test_size: float) -> None:
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)):
        raise InvalidInput(f"--test-size {test_size!r}: must be a number", field="test_size")
    if isinstance(test_size, int) or float(test_size).is_integer() and test_size >= 1:
        if test_size < 1:
            raise InvalidInput(f"--test-size {test_size}: a row count must be at least 1", field="test_size")
        return
    if not 0 < test_size < 1:
        raise InvalidInput(
            f"--test-size {test_size}: must be a fraction between 0 and 1 (e.g. 0.2) or a row count",
            field="test_size",
        )


def _test_count(test_size: float, total: int) -> int:
    """Rows in the test split: ``ceil(fraction * total)`` (as `datasets` does) or the count given."""
    n_test = int(test_size) if float(test_size).is_integer() else math.ceil(test_size * total)
    if not 1 <= n_test <= total - 1:
        raise InvalidInput(
            f"--test-size {test_size}: leaves {n_test} test and {total - n_test} train rows out of {total}; "
            "both splits need at least one row",
            field="test_size",
        )
    return n_test


def _looks_like_path(dataset: str) -> bool:
    return (
        dataset.startswith(("/", "./", "../", "~", ".\\"))
        or Path(dataset).suffix.lower() in BUILDERS
        or "\\" in dataset
    )


def _local_files(dataset: str) -> tuple[str, list[Path]] | None:
    """(builder, files) for `sample` or an existing local path; None for a hub name."""
    if not dataset or not dataset.strip():
        raise InvalidInput(
            "--dataset is empty: give `sample`, a local file or directory, or a hub name", field="dataset"
        )
    if dataset == SAMPLE_NAME:
        return "json", [SAMPLE_PATH]
    path = Path(dataset).expanduser()
    if path.is_file():
        builder = BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise InvalidInput(
                f"{path}: unsupported file type {path.suffix or '(none)'}; use one of {', '.join(BUILDERS)}",
                field="dataset",
            )
        return builder, [path]
    if path.is_dir():
        return _directory_files(path)
    if _looks_like_path(dataset):
        raise NotFound(f"{path}: no such file or directory", field="dataset")
    return None


def _directory_files(path: Path) -> tuple[str, list[Path]]:
    files = sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in BUILDERS and not p.name.startswith(".")
    )
    if not files:
        raise NotFound(f"{path}: no {', '.join(BUILDERS)} files in this directory", field="dataset")
    builders = {BUILDERS[p.suffix.lower()] for p in files}
    if len(builders) > 1:
        raise InvalidInput(
            f"{path}: mixes {', '.join(sorted(builders))} files; keep one format per directory", field="dataset"
        )
    return builders.pop(), files


def _local_split(split: str | None) -> str:
    """Map a split string onto the single `train` split of local data, keeping its slice."""
    if split is None or not split.strip():
        return "train"
    match = _SPLIT.match(split)
    if match is None:
        raise InvalidInput(
            f"--split {split!r}: for local data use a name with an optional slice, e.g. train[:100] or train[:10%]",
            field="split",
        )
    return "train" + (match.group("slice") or "")


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """Local files load in a blink: no bars, and parse errors surface as InvalidInput, not log lines."""
    from datasets.utils import logging as ds_logging

    was_enabled, verbosity = ds_logging.is_progress_bar_enabled(), ds_logging.get_verbosity()
    ds_logging.disable_progress_bar()
    ds_logging.set_verbosity(ds_logging.CRITICAL)
    try:
        yield
    finally:
        ds_logging.set_verbosity(verbosity)
        if was_enabled:
            ds_logging.enable_progress_bar()


def _load_local(builder: str, files: list[Path], split: str, source: str):
    """Read local files into memory; a throwaway cache keeps the user's HF cache clean."""
    from datasets import load_dataset

    with tempfile.TemporaryDirectory(prefix="forgeflow-data-") as cache, _quiet_progress():
        try:
            return load_dataset(
                builder,
                data_files={"train": [str(f) for f in files]},
                split=split,
                cache_dir=cache,
                keep_in_memory=True,
            )
        except ValueError as exc:
            raise InvalidInput(f"--split {split}: {exc}", field="split") from exc
        except Exception as exc:
            raise InvalidInput(f"{source}: cannot read as {builder}: {_reason(exc)}", field="dataset") from exc


def _load_hub(name: str, config: str | None, split: str | None):
    """``load_dataset(name, config, split=split)``; offline this only finds the local HF cache."""
    from datasets import Dataset, DatasetDict, load_dataset
    from datasets.exceptions import DatasetNotFoundError

    try:
        loaded = load_dataset(name, config, split=split)
    except (DatasetNotFoundError, FileNotFoundError, ConnectionError) as exc:
        where = (
            "it is not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)"
            if _offline()
            else "the hub has no such dataset, or it could not be reached"
        )
        raise NotFound(
            f"dataset {name!r}: not a local file or directory, and {where}; "
            "use `sample`, a local .jsonl/.json/.csv/.parquet path, or download it once while online",
            field="dataset",
        ) from exc
    except ValueError as exc:
        raise InvalidInput(f"dataset {name!r} (config {config!r}, split {split!r}): {_reason(exc)}") from exc
    if isinstance(loaded, DatasetDict):
        loaded = _pick_split(name, loaded)
    if not isinstance(loaded, Dataset):
        raise InvalidInput(f"dataset {name!r}: streaming/iterable datasets are not supported", field="dataset")
    return loaded


def _offline() -> bool:
    flags = (os.environ.get(v, "").upper() for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(f in {"1", "ON", "YES", "TRUE"} for f in flags)


def _pick_split(name: str, splits: Any):
    """With no --split: the only split, else `train`, else an error listing the choices."""
    if len(splits) == 1:
        return next(iter(splits.values()))
    if "train" in splits:
        return splits["train"]
    raise InvalidInput(
        f"dataset {name!r} has splits {', '.join(splits)}; choose one with --split (e.g. {next(iter(splits))}[:1%])",
        field="split",
    )


def _reason(exc: BaseException) -> str:
    """The most specific message in an exception chain (datasets wraps parser errors)."""
    while exc.__cause__ is not None and str(exc.__cause__):
        exc = exc.__cause__
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _write_jsonl(rows, path: Path) -> None:
    """One whole record per line, as the walkthrough's ``save_dataset_to_jsonl`` does."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in rows:
            f.write(json.dumps(record, ensure_ascii=False, default=str))
            f.write("\n")
    tmp.replace(path)
