"""The live progress bar of `job create --stream` / `job stream` / `job resume --stream` / `model evaluate`.

`JobWatch` turns what the server says (the job row, new metrics rows) into what the bar shows:
step/max_steps, ETA (the worker's `eta_s`, else an estimate from the step rate this client saw),
the latest train and eval loss and training tokens per second.
"""

from __future__ import annotations

import time
from typing import Any

from forgeflow.names import url_path
from forgeflow.store.states import JobStatus

TOKEN_KEYS = ("trained_tokens", "num_tokens")


class JobWatch:
    """What the bar shows, from successive job rows and metrics rows."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.rows: list[dict[str, Any]] = []
        self.job: dict[str, Any] = {}
        self._first: tuple[float, int] | None = None  # (when, step) the first time a step > 0 was seen
        self._last: tuple[float, int] | None = None

    def update(self, job: dict[str, Any], new_rows: list[dict[str, Any]]) -> None:
        self.job = job
        self.rows.extend(new_rows)
        step = self.step
        if step > 0:
            t = self.clock()
            if self._first is None or step < self._first[1]:  # first sight, or a resume went back
                self._first = (t, step)
            self._last = (t, step)

    @property
    def progress(self) -> dict[str, Any]:
        return self.job.get("progress") or {}

    @property
    def step(self) -> int:
        return int(self.progress.get("step") or 0)

    @property
    def max_steps(self) -> int | None:
        return int(self.progress["max_steps"]) if self.progress.get("max_steps") else None

    def eta_s(self) -> float | None:
        """Seconds left: the worker's estimate when it gives one, else this client's step rate."""
        if JobStatus(self.job["status"]).terminal:
            return 0.0
        if isinstance(self.progress.get("eta_s"), (int, float)):
            return float(self.progress["eta_s"])
        if not (self.max_steps and self._first and self._last) or self._last[1] <= self._first[1]:
            return None
        rate = (self._last[1] - self._first[1]) / max(self._last[0] - self._first[0], 1e-6)
        return max(self.max_steps - self.step, 0) / rate

    def last(self, key: str) -> float | None:
        for row in reversed(self.rows):
            if isinstance(row.get(key), (int, float)):
                return float(row[key])
        return None

    def tokens_per_s(self) -> float | None:
        """The worker's train_tokens_per_second, else token count growth over the rows' timestamps."""
        direct = self.last("train_tokens_per_second")
        if direct is not None:
            return direct
        for key in TOKEN_KEYS:
            rows = [r for r in self.rows if isinstance(r.get(key), (int, float)) and isinstance(r.get("timestamp"), (int, float))]
            if len(rows) >= 2 and rows[-1]["timestamp"] > rows[0]["timestamp"] and rows[-1][key] > rows[0][key]:
                return (rows[-1][key] - rows[0][key]) / (rows[-1]["timestamp"] - rows[0]["timestamp"])
        return None

    def fields(self, unit: str = "step") -> dict[str, str]:
        """Text for the bar's columns; `unit` is what the job counts (an evaluation counts rows)."""
        eta = self.eta_s()
        loss = self.last("train_loss")
        eval_loss = self.last("eval_loss")
        speed = self.tokens_per_s()
        steps = f"{self.step}/{self.max_steps}" if self.max_steps else (f"{self.step}" if self.step else "-")
        parts = []
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if eval_loss is not None:
            parts.append(f"eval {eval_loss:.4f}")
        if speed is not None:
            parts.append(f"{speed:,.0f} tok/s")
        return {"steps": f"{unit} {steps}", "eta": f"ETA {format_duration(eta)}" if eta is not None else "ETA -",
                "stats": "  ".join(parts)}


def format_duration(seconds: float) -> str:
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def follow(c: Any, job_id: str, *, quiet: bool = False, show_logs: bool = False, console: Any = None,
           poll_s: float = 1.0, unit: str = "step") -> dict[str, Any]:
    """Show the bar until the job ends; returns the final job row."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    watch = JobWatch()
    offset = 0
    log_offset = 0
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[steps]}"),
               TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), TextColumn("{task.fields[stats]}"))
    with Progress(*columns, console=console, disable=quiet, transient=False) as bar:
        task = bar.add_task(f"{job_id} Queued", total=None, steps="", eta="", stats="")
        while True:
            job = c.get(url_path("api", "jobs", job_id))
            rows = c.get(url_path("api", "jobs", job_id, "metrics"), params={"offset": offset})
            offset += len(rows)
            watch.update(job, rows)
            done = JobStatus(job["status"]).terminal
            total = watch.max_steps
            completed = total if done and job["status"] == JobStatus.COMPLETED and total else watch.step
            bar.update(task, description=f"{job['id']} {job['status']}", total=total, completed=completed,
                       **watch.fields(unit))
            if show_logs and not quiet:
                logs = c.get(url_path("api", "jobs", job_id, "logs"), params={"offset": log_offset})
                log_offset = logs["next_offset"]
                if logs["text"]:
                    bar.console.print(logs["text"].rstrip(), markup=False, highlight=False)
            if done:
                return job
            time.sleep(poll_s)
