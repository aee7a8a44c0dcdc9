"""Batch runs: one flow over every row of a data file, lines in parallel, results kept per line.

A failed line is recorded with its error and traceback and never stops the others. Results go
to the run's folder as lines finish (see runs.py), so `resume` only runs the missing lines.
Evaluation flows read a base run's lines with `${run.outputs.x}` / `${run.inputs.x}`.
"""

from __future__ import annotations

import csv
import json
import os
import re
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from forgeflow.errors import ForgeflowError, InvalidInput, NotFound, shorten
from forgeflow.flows.contract import ConnectionProvider, Flow, variant_label
from forgeflow.flows.executor import has_aggregation, run_aggregation, run_flow
from forgeflow.flows.loader import load_flow
from forgeflow.flows.result import RunStatus
from forgeflow.flows.runs import RunRecord, new_run_name, now
from forgeflow.names import parse_assignments

_EXPR = re.compile(r"\$\{\s*(data|run\.outputs|run\.inputs)\.([^{}\s]+)\s*\}")
ProgressFn = Callable[[int, int, dict], None]


def read_data(path: Path) -> list[dict]:
    """Rows of a .jsonl, .json (a list of objects) or .csv file."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"--data {path}: file not found", field="data")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".csv":
            rows: list = list(csv.DictReader(text.splitlines()))
        elif path.suffix == ".json":
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as exc:
        raise InvalidInput(f"--data {path}: not valid {path.suffix.lstrip('.') or 'jsonl'}: {exc}", field="data") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InvalidInput(f"--data {path}: every row must be a JSON object", field="data")
    return rows


def parse_column_mapping(items: list[str] | None, flow: Flow) -> dict[str, Any]:
    """`name=${data.col}` / `name=${run.outputs.x}` / `name=literal` pairs, checked against the flow."""
    mapping: dict[str, Any] = {}
    for key, value in parse_assignments(items, "--column-mapping", "question='${data.question}'").items():
        value = value.strip()
        if key not in flow.inputs:
            raise InvalidInput(f"--column-mapping {key}: the flow has no input {key!r} (inputs: {', '.join(flow.inputs)})",
                               field="column_mapping")
        if value.startswith("${") and not _EXPR.fullmatch(value):
            raise InvalidInput(f"--column-mapping {key}={value}: use ${{data.COLUMN}}, ${{run.outputs.NAME}} "
                               f"or ${{run.inputs.NAME}}", field="column_mapping")
        mapping[key] = value
    return mapping


def line_inputs(flow: Flow, row: dict, base: dict | None, mapping: dict[str, Any]) -> dict:
    """The flow inputs of one line: mapped values, else the row's column of the same name."""
    inputs = {name: row[name] for name in flow.inputs if name in row}
    for key, value in mapping.items():
        m = _EXPR.fullmatch(value) if isinstance(value, str) else None
        if m is None:
            inputs[key] = value
            continue
        source, field = m.groups()
        if source == "data":
            if field not in row:
                raise InvalidInput(f"column mapping {key}: the data row has no column {field!r} "
                                   f"(columns: {', '.join(row) or 'none'})", field=key)
            inputs[key] = row[field]
            continue
        if base is None:
            raise InvalidInput(f"column mapping {key}: {value} needs a base run (--run NAME)", field=key)
        if base.get("status") != RunStatus.COMPLETED:
            raise InvalidInput(f"column mapping {key}: line {base.get('line_number')} of the base run failed", field=key)
        part = base.get("outputs" if source == "run.outputs" else "inputs") or {}
        if field not in part:
            raise InvalidInput(f"column mapping {key}: the base run's line has no {source.split('.')[1]} {field!r}",
                               field=key)
        inputs[key] = part[field]
    return inputs


def _error(exc: BaseException) -> dict:
    if isinstance(exc, ForgeflowError):
        return {"type": type(exc).__name__, "message": exc.message, "field": exc.field,
                "details": getattr(exc, "details", None)}
    return {"type": type(exc).__name__, "message": shorten(f"{type(exc).__name__}: {exc}"), "field": None,
            "details": traceback.format_exc()}


class BatchRun:
    """Runs (or resumes) one batch run; `progress(done, total, line)` is called after each line."""

    def __init__(self, record: RunRecord, *, connection_provider: ConnectionProvider | None = None, workers: int = 4,
                 progress: ProgressFn | None = None) -> None:
        self.record = record
        self.provider = connection_provider
        self.workers = max(1, int(workers))
        self.progress = progress
        self.stop = threading.Event()

    def _line(self, flow: Flow, number: int, row: dict, base: dict | None, mapping: dict) -> dict:
        started = time.perf_counter()
        line: dict[str, Any] = {"line_number": number, "status": RunStatus.FAILED, "inputs": {}, "outputs": None,
                                "error": None}
        try:
            line["inputs"] = line_inputs(flow, row, base, mapping)
            # aggregation nodes run once, over all lines, when the batch ends
            result = run_flow(flow, line["inputs"], connection_provider=self.provider, aggregate=False)
            line.update(status=RunStatus.COMPLETED, inputs=result.inputs, outputs=result.outputs,
                        node_results=_nodes(result.node_results, outputs=True))
        except Exception as exc:  # a failed line is recorded, never fatal to the run
            line["error"] = _error(exc)
            partial = getattr(exc, "result", None)
            if partial is not None:
                line["inputs"] = partial.inputs or line["inputs"]
                line["node_results"] = _nodes(partial.node_results, outputs=False)
        line["duration_s"] = round(time.perf_counter() - started, 6)
        return line

    def execute(self) -> dict:
        """Run every line not finished yet, then aggregation; returns the final meta."""
        meta = self.record.meta()
        flow = load_flow(meta["flow"], meta.get("variant"))
        rows = _rows(meta)
        base = {line["line_number"]: line for line in RunRecord.open(meta["run"]).lines()} if meta.get("run") else {}
        mapping = meta.get("column_mapping") or {}
        done = {line["line_number"] for line in self.record.compact()}
        todo = [n for n in range(len(rows)) if n not in done]
        self.record.update_meta(status=RunStatus.RUNNING, pid=os.getpid(), total_lines=len(rows), started_at=now())
        writer = self.record.writer()
        finished = len(done)
        t0 = time.perf_counter()
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="forgeflow-line")
        pending: set[Future] = set()
        it = iter(todo)
        try:
            while True:
                while not self.stop.is_set() and len(pending) < self.workers * 2:
                    n = next(it, None)
                    if n is None:
                        break
                    pending.add(pool.submit(self._line, flow, n, rows[n], base.get(n), mapping))
                if not pending:
                    break
                complete, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in complete:
                    line = fut.result()
                    writer.write(line)
                    finished += 1
                    if self.progress:
                        self.progress(finished, len(rows), line)
        except BaseException:
            self.stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            writer.close()
            self.record.update_meta(status=RunStatus.CANCELED, pid=None, finished_at=now())
            raise
        pool.shutdown(wait=True)
        writer.close()
        elapsed = time.perf_counter() - t0
        if self.stop.is_set():
            return self.record.update_meta(status=RunStatus.CANCELED, pid=None, finished_at=now())
        lines = self.record.lines()
        metrics, aggregation = _aggregate(flow, lines, self.provider)
        self.record.write_metrics(metrics)
        failed = sum(1 for line in lines if line["status"] != RunStatus.COMPLETED)
        return self.record.update_meta(
            status=RunStatus.COMPLETED if not failed else RunStatus.COMPLETED_WITH_ERRORS, pid=None, finished_at=now(),
            completed_lines=len(lines) - failed, failed_lines=failed, aggregation=aggregation,
            duration_s=round(meta.get("duration_s", 0.0) + elapsed, 3),
        )


def _nodes(node_results: dict, *, outputs: bool) -> dict:
    """Per-node status and time; node outputs too, which aggregation nodes read after the batch."""
    keys = ("status", "duration_s", "output") if outputs else ("status", "duration_s")
    return {n: {k: r.get(k) for k in keys} for n, r in node_results.items()}


def _aggregate(flow: Flow, lines: list[dict], provider: ConnectionProvider | None) -> tuple[dict, str]:
    """Run aggregation nodes over the completed lines and collect metrics."""
    if not has_aggregation(flow):
        return {}, "none"
    ok = [line for line in lines if line["status"] == RunStatus.COMPLETED]
    try:
        result = run_aggregation(flow, ok, connection_provider=provider)
    except ForgeflowError as exc:
        return {}, f"failed: {exc.message}"
    return {m["key"]: m["value"] for m in result.metrics}, "completed"


def _rows(meta: dict) -> list[dict]:
    if meta.get("data"):
        return read_data(Path(meta["data"]))
    base = RunRecord.open(meta["run"]).lines()
    return [line.get("inputs") or {} for line in base]


def start_run(flow_dir: Path, *, data: Path | None, column_mapping: list[str] | None = None,
              base_run: str | None = None, name: str | None = None, workers: int = 4,
              variant: str | None = None) -> RunRecord:
    """Validate the arguments and create the run's record (status NotStarted).

    `variant` (`${node.variant_id}`) runs every line with that node variant: one run per variant, then `compare`.
    """
    flow = load_flow(flow_dir, variant)
    if data is None and base_run is None:
        raise InvalidInput("a batch run needs --data FILE (or --run BASE to run over a base run's lines)", field="data")
    if base_run:
        RunRecord.open(base_run)
    rows = read_data(Path(data)) if data else None
    mapping = parse_column_mapping(column_mapping, flow)
    meta = {
        "flow": str(flow.dir), "data": str(Path(data).resolve()) if data else None, "run": base_run,
        "column_mapping": mapping, "workers": workers, "status": RunStatus.NOT_STARTED, "created_at": now(),
        "total_lines": len(rows) if rows is not None else None, "variant": variant_label(flow),
    }
    return RunRecord.create(name or new_run_name(flow.dir, flow.variant[1] if flow.variant else None), meta)


def resumable(record: RunRecord) -> None:
    """Refuse to resume a run that is finished or still running in a live process."""
    from forgeflow.processes import pid_alive

    meta = record.meta()
    if meta.get("status") == RunStatus.RUNNING and meta.get("pid") and meta["pid"] != os.getpid() and pid_alive(meta["pid"]):
        raise ForgeflowError(f"run {record.name!r} is still running (pid {meta['pid']})")
    if meta.get("status") in (RunStatus.COMPLETED, RunStatus.COMPLETED_WITH_ERRORS) and len(record.lines()) >= (meta.get("total_lines") or 0):
        raise InvalidInput(f"run {record.name!r} is already complete; nothing to resume", field="run")


def summary(record: RunRecord) -> dict:
    meta = record.meta()
    lines = record.lines()
    failed = sum(1 for line in lines if line["status"] != RunStatus.COMPLETED)
    return {**meta, "finished_lines": len(lines), "completed_lines": len(lines) - failed, "failed_lines": failed,
            "run_dir": str(record.dir)}


def compare(names: list[str]) -> dict:
    """Runs side by side: each run's variant (an evaluation run's is its base run's), line counts and metrics.

    Prompt flow's way to tune a prompt: a batch run per variant, an evaluation run over each, then their
    aggregated metrics compared. `metrics` lists every metric name any of the runs logged, in first-seen order.
    """
    if not names:
        raise InvalidInput("name at least one run to compare (see: forgeflow flow run list)", field="runs")
    runs, metric_names = [], {}
    for name in dict.fromkeys(names):
        record = RunRecord.open(name)
        meta = summary(record)
        base = meta.get("run")
        base_variant = None
        if base:
            try:
                base_variant = RunRecord.open(base).meta().get("variant")
            except NotFound:
                base_variant = None  # the base run was deleted: its variant is unknown
        metrics = record.metrics()
        metric_names.update(dict.fromkeys(metrics))
        runs.append({"name": name, "flow": meta.get("flow"), "status": meta.get("status"),
                     "variant": meta.get("variant") or base_variant, "base_run": base,
                     "total_lines": meta.get("total_lines"), "completed_lines": meta["completed_lines"],
                     "failed_lines": meta["failed_lines"], "metrics": metrics})
    return {"metrics": list(metric_names), "runs": runs}
