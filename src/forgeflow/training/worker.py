"""The training worker: one process per fine-tuning job, `python -m forgeflow.training.worker JOB_DIR`.

Reads the job file JOB_DIR/spec.json (`jobs.JobSpec`, written by the job runner), trains a LoRA adapter (QLoRA on
a GPU, or all weights) on chat `messages` data with loss on assistant turns only and packed rows (masking.py,
packing.py, trainer.py), or with `method: dpo` on preference rows (dpo.py), merges it into the base model and saves
the result in MLflow format under JOB_DIR/outputs (finetune.py).
Checkpoints go to JOB_DIR/checkpoints; `"resume": true` in spec.json continues from the newest one. Progress goes to
JOB_DIR/status.json, JOB_DIR/metrics.jsonl, an MLflow run and stdout. SIGTERM stops training at the next step:
status Canceled, exit 0. Any error: status Failed, exit 1.

`train` also runs in each worker of a data-parallel job (`distributed.py`): there every worker trains, and rank 0
alone writes the record and the model.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable

from forgeflow import __version__
from forgeflow.errors import ForgeflowError
from forgeflow.store.states import JobStatus
from forgeflow.training.dataset import iter_messages, prepare
from forgeflow.training.finetune import (
    find_resume_checkpoint,
    fit,
    job_callbacks,
    load_model,
    resolve_precision,
    training_arguments,
)
from forgeflow.training.hyperparams import check_hardware
from forgeflow.training.jobs import JobSpec
from forgeflow.training.parallel import any_worker
from forgeflow.training.tracking import Attempt, JobFiles, MlflowRun, read_status

# Set by a compute that runs workers on other machines: the forgeflow version of the server that queued the job.
VERSION_ENV = "FORGEFLOW_VERSION"
Train = Callable[[JobSpec, JobFiles, MlflowRun | None, Attempt], tuple[JobStatus, dict[str, float]]]


class RunSlot:
    """The job's MLflow run once its work opened it, so that a failure afterwards can end it as failed."""

    run: MlflowRun | None = None


# What a job program does between its start and its end: (end status, final metrics or None to keep those written).
JobWork = Callable[[JobFiles, Attempt, dict[str, Any], RunSlot], tuple[JobStatus, dict[str, Any] | None]]


def run_worker(job_dir: Path, work: JobWork) -> int:
    """The life of a job's worker process, whatever the job does (`work`): its start written over any earlier one
    (`tracking.Attempt`), SIGTERM as cancel, the end status and its MLflow run's end, a failure as one readable line,
    and nothing written once a newer start took the folder over. Returns the process exit code (0 done, canceled or
    superseded, 1 failed)."""
    quiet_environment()
    files = JobFiles(Path(job_dir))
    previous = read_status(files.job_dir) or {}
    attempt = Attempt.begin(files, threading.Event())
    files.write_status(JobStatus.RUNNING, error=None)
    restore = stop_on_sigterm(attempt.event)
    slot = RunSlot()
    try:
        check_version()
        status, metrics = work(files, attempt, previous, slot)
        if attempt.superseded:
            print("stopped: a newer start of this job took over its folder", flush=True)
            return 0
        files.write_status(status, **({"metrics": metrics} if metrics is not None else {}))
        print(f"job {status.lower()}", flush=True)
        if slot.run is not None:
            slot.run.end(status)
        return 0
    except Exception as exc:
        traceback.print_exc()
        if attempt.superseded:  # the error may be the newer start's doing (its record, its MLflow run): leave both
            print("stopped: a newer start of this job took over its folder", flush=True)
            return 0
        files.write_status(JobStatus.FAILED, error=one_line_error(exc))
        if slot.run is not None and files.record:
            try:
                slot.run.end(JobStatus.FAILED)
            except Exception:
                traceback.print_exc()
        return 1
    finally:
        restore()


def run_job(job_dir: Path, train_with: Train | None = None) -> int:
    """Run the fine-tuning job in JOB_DIR to its end, training with `train_with` (default `train`, here)."""

    def work(files: JobFiles, attempt: Attempt, previous: dict[str, Any], slot: RunSlot):
        spec = JobSpec.read(files.job_dir)
        if spec.resume and previous.get("mlflow_run_id"):
            slot.run = MlflowRun.reopen(spec, previous["mlflow_run_id"])
        if slot.run is None:
            slot.run = MlflowRun.start(spec)
        files.write_status(mlflow_run_id=slot.run.run_id)
        check_training_data(spec)
        return (train_with or train)(spec, files, slot.run, attempt)

    return run_worker(job_dir, work)


def check_version() -> None:
    """A worker started on another machine refuses to run a job queued by a different forgeflow."""
    wanted = os.environ.get(VERSION_ENV)
    if wanted and wanted != __version__:
        raise ForgeflowError(f"this node runs forgeflow {__version__} but the server that queued the job runs "
                             f"{wanted}: install forgeflow=={wanted} on every node of the cluster")


def check_training_data(spec: JobSpec) -> None:
    """Check the job's data files row by row before loading the model: chat rows, or preference rows for dpo."""
    if spec.hyperparameters.method.method == "dpo":
        from forgeflow.data.validate import iter_preferences

        for path, field in ((spec.training_data, "training_data"), (spec.validation_data, "validation_data")):
            if path:
                sum(1 for _ in iter_preferences(Path(path), field))
        return
    check_chat_jsonl(Path(spec.training_data))
    if spec.validation_data:
        check_chat_jsonl(Path(spec.validation_data))


def check_chat_jsonl(path: Path) -> int:
    """Check that every line of a chat JSONL file has a non-empty `messages` list; returns the row count."""
    return sum(1 for _ in iter_messages(path))


def train(
    spec: JobSpec, files: JobFiles, run: MlflowRun | None, cancel: Attempt
) -> tuple[JobStatus, dict[str, float]]:
    """Fine-tune, then save adapter + merged MLflow model under JOB_DIR/outputs; returns (status, final metrics).
    `cancel.is_set()` asks to stop; the workers of a data-parallel job ask it together (`any_worker`)."""
    check_hardware(spec.hyperparameters)
    if spec.hyperparameters.method.method == "dpo":
        from forgeflow.training.dpo import train_preferences

        return train_preferences(spec, files, run, cancel)
    if any_worker(cancel.is_set()):
        return JobStatus.CANCELED, {}
    import torch
    from transformers import (
        AutoTokenizer,
        PrinterCallback,
        TrainingArguments,
        set_seed,
    )

    from forgeflow.training.packing import PackedCollator
    from forgeflow.training.trainer import ForgeflowTrainer

    job_dir = files.job_dir
    hp = spec.hyperparameters
    use_cuda = torch.cuda.is_available()
    precision = resolve_precision(hp.memory.precision, use_cuda)
    base = spec.base_model_path
    method = "full fine-tune" if not hp.lora.apply_lora else ("QLoRA" if hp.lora.quantization != "none" else "LoRA")
    device = "cuda" if use_cuda else "cpu"
    print(f"loading {spec.base_model} ({method}, {precision}, {device})", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    max_len, packing = hp.data.max_seq_length, hp.data.packing
    train_data = prepare(Path(spec.training_data), tokenizer, max_len, packing)
    print(train_data.describe("training data", max_len), flush=True)
    eval_data = None
    evaluating = hp.evaluation.evaluation_strategy != "no"
    if evaluating and spec.validation_data:
        eval_data = prepare(Path(spec.validation_data), tokenizer, max_len, packing)
        print(eval_data.describe("validation data", max_len), flush=True)
    elif evaluating:
        print("no validation data: evaluation is off", flush=True)
    data_metrics = {"truncated_conversations": train_data.truncated, "train_conversations": train_data.conversations}
    files.write_status(metrics=data_metrics)
    if run is not None:
        run.log_metrics(data_metrics, step=0)
    print("loss on assistant turns only, each with its end-of-turn token", flush=True)

    set_seed(hp.optimization.seed)  # the LoRA weights' initialisation too, not only the Trainer's data order
    model = load_model(base, hp, precision, use_cuda)
    checkpoint = find_resume_checkpoint(spec, job_dir / "checkpoints")
    config = training_arguments(TrainingArguments, hp, job_dir, precision, use_cuda, eval_data is not None)
    progress, callbacks = job_callbacks(hp, files, run, cancel, eval_data is not None)
    trainer = ForgeflowTrainer(
        model=model,
        args=config,
        train_dataset=train_data.rows,
        eval_dataset=eval_data.rows if eval_data is not None else None,
        data_collator=PackedCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    return fit(trainer, progress, files=files, spec=spec, tokenizer=tokenizer, checkpoint=checkpoint,
               evaluating=eval_data is not None, cancel=cancel, data_metrics=data_metrics)


def one_line_error(exc: BaseException) -> str:
    if isinstance(exc, ForgeflowError):
        return exc.message.splitlines()[0] if exc.message else type(exc).__name__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def stop_on_sigterm(cancel: threading.Event) -> Any:
    """SIGTERM sets `cancel` (training stops at the next step); returns what puts the previous handler back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        print("SIGTERM: stopping at the next step", flush=True)
        cancel.set()

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def quiet_environment() -> None:
    """No progress bars or tokenizer thread warnings in worker.log."""
    for key, value in (
        ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
        ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
    ):
        os.environ.setdefault(key, value)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m forgeflow.training.worker JOB_DIR", file=sys.stderr)
        return 2
    return run_job(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
