"""Trainer callbacks of the worker (supervised and DPO): progress to status.json / metrics.jsonl / MLflow / stdout,
and cancel."""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback

from forgeflow.store.states import JobStatus
from forgeflow.training.parallel import any_worker
from forgeflow.training.tracking import Attempt, JobFiles, MlflowRun, is_finite_number

SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos")
# The latest of these are kept in status.json's `metrics` while the job runs.
LIVE_KEYS = (
    "train_loss", "eval_loss", "learning_rate", "trained_tokens", "loss_tokens", "train_tokens_per_second",
    "peak_memory_mb", "truncated_conversations", "train_conversations", "train_pairs", "truncated_pairs",
    "rewards_margins", "rewards_accuracies", "eval_rewards_margins", "eval_rewards_accuracies",
)
# The latest of these, with train_runtime, are the job's final metrics.
FINAL_KEYS = (
    "train_loss", "eval_loss", "trained_tokens", "loss_tokens", "train_tokens_per_second", "peak_memory_mb",
    "rewards_chosen", "rewards_rejected", "rewards_margins", "rewards_accuracies", "eval_rewards_chosen",
    "eval_rewards_rejected", "eval_rewards_margins", "eval_rewards_accuracies",
)


class ProgressCallback(TrainerCallback):
    """Turns every trainer log event into a metrics row, a status update, an MLflow batch and a log line."""

    def __init__(self, files: JobFiles, run: MlflowRun | None) -> None:
        self.files = files
        self.run = run
        self.last: dict[str, float] = {}
        self.summary: dict[str, float] = {}
        self.last_eval_step = -1

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.files.write_status(JobStatus.RUNNING, step=state.global_step, max_steps=state.max_steps, epoch=_epoch(state))
        print(f"training: {state.max_steps} steps", flush=True)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        logs = {k: v for k, v in (logs or {}).items() if is_finite_number(v)}
        if any(k in logs for k in SUMMARY_KEYS):
            # The end-of-training summary: its train_loss is the run average, not a point on the curve.
            self.summary.update({metric_name(k): float(v) for k, v in logs.items() if k != "epoch"})
            self._mlflow({f"summary_{k}" if k == "train_loss" else k: v for k, v in self.summary.items()}, state)
            return
        values = {metric_name(k): float(v) for k, v in logs.items() if k != "epoch"}
        eta_s = values.pop("eta_s", None)
        if not values:
            return
        if "eval_loss" in values:
            self.last_eval_step = state.global_step
        self.last.update(values)
        row = {"step": state.global_step, "epoch": _epoch(state), **values, "timestamp": time.time()}
        self.files.append_metrics(row)
        live = {k: self.last[k] for k in LIVE_KEYS if k in self.last}
        live = {**(self.files.state.get("metrics") or {}), **live}
        fields: dict[str, Any] = {"step": state.global_step, "epoch": _epoch(state), "metrics": live}
        if state.max_steps:
            fields["max_steps"] = state.max_steps
        if eta_s is not None:
            fields["eta_s"] = eta_s
        self.files.write_status(JobStatus.RUNNING, **fields)
        self._mlflow(values, state)
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in values.items())
        print(f"step {state.global_step}/{state.max_steps} epoch {_epoch(state):.2f} {shown}", flush=True)

    def final_metrics(self) -> dict[str, float]:
        """The newest value of each FINAL_KEYS metric logged, and the run's train_runtime."""
        metrics = {key: self.last[key] for key in FINAL_KEYS if key in self.last}
        if "train_runtime" in self.summary:
            metrics["train_runtime"] = self.summary["train_runtime"]
        return metrics

    def _mlflow(self, values: dict[str, float], state: Any) -> None:
        if self.run is not None and self.files.record:
            self.run.log_metrics(values, step=state.global_step)


class CancelCallback(TrainerCallback):
    """Stops training at the next step boundary once the job's `Attempt` says so (canceled or superseded); the
    workers of a data-parallel job stop together, at the same step."""

    def __init__(self, attempt: Attempt) -> None:
        self.attempt = attempt

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if any_worker(self.attempt.is_set()):
            control.should_training_stop = True
            control.should_save = False
            control.should_evaluate = False
        return control

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if any_worker(self.attempt.is_set()):
            control.should_training_stop = True
        return control


def metric_name(key: str) -> str:
    """A trainer's log key as forgeflow records it: `loss` is train_loss, and TRL's grouped names such as
    `rewards/margins` or `eval_logps/chosen` become rewards_margins and eval_logps_chosen (one word per metric in
    metrics.jsonl, status.json and the MLflow run)."""
    return "train_loss" if key == "loss" else key.replace("/", "_")


def _epoch(state: Any) -> float:
    return round(float(state.epoch or 0.0), 4)


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
