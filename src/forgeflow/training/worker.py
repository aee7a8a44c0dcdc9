"""The training worker: one process per fine-tuning job, `python -m forgeflow.training.worker JOB_DIR`.

Reads JOB_DIR/spec.json (written by the job runner), trains a LoRA adapter (or all weights) with TRL's
SFTTrainer on chat `messages` data, merges it into the base model and saves the result in MLflow format
under JOB_DIR/outputs. Progress goes to JOB_DIR/status.json, JOB_DIR/metrics.jsonl, an MLflow run and
stdout. SIGTERM stops training at the next step: status Canceled, exit 0. Any error: status Failed, exit 1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from forgeflow.errors import ForgeflowError, InvalidInput, NotFound
from forgeflow.training.hyperparams import Hyperparameters, resolve_hyperparameters
from forgeflow.training.tracking import JobFiles, MlflowRun

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
REQUIRED_SPEC = ("base_model_path", "training_data", "mlflow_tracking_uri")


def run_job(job_dir: Path) -> int:
    """Run the job in JOB_DIR to its end; returns the process exit code (0 done or canceled, 1 failed)."""
    _quiet_environment()
    files = JobFiles(Path(job_dir))
    files.write_status("Running")
    cancel = threading.Event()
    restore = _install_sigterm(cancel)
    run: MlflowRun | None = None
    try:
        spec = load_spec(files.job_dir)
        hp = resolve_hyperparameters(spec.get("hyperparameters") or {})
        run = MlflowRun.start(spec, hp.model_dump())
        files.write_status(mlflow_run_id=run.run_id)
        check_chat_jsonl(Path(spec["training_data"]))
        if spec.get("validation_data"):
            check_chat_jsonl(Path(spec["validation_data"]))
        status, metrics = train(spec, hp, files, run, cancel)
        files.write_status(status, metrics=metrics)
        print(f"job {status.lower()}", flush=True)
        run.end(status)
        return 0
    except Exception as exc:
        traceback.print_exc()
        files.write_status("Failed", error=one_line_error(exc))
        if run is not None:
            try:
                run.end("Failed")
            except Exception:
                traceback.print_exc()
        return 1
    finally:
        restore()


def load_spec(job_dir: Path) -> dict[str, Any]:
    path = job_dir / "spec.json"
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotFound(f"{path} is missing; the job runner writes it before starting the worker") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path} is not valid JSON: {exc}") from None
    missing = [key for key in REQUIRED_SPEC if not spec.get(key)]
    if missing:
        raise InvalidInput(f"{path} lacks {', '.join(missing)}", field=missing[0])
    return spec


def check_chat_jsonl(path: Path) -> int:
    """Check that every line of a chat JSONL file has a non-empty `messages` list; returns the row count."""
    if not path.is_file():
        raise NotFound(f"data file {path} does not exist")
    rows = 0
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            messages = row.get("messages") if isinstance(row, dict) else None
            if not isinstance(messages, list) or not messages:
                raise InvalidInput(f"{path}:{lineno}: 'messages' must be a non-empty list", field="messages")
            for message in messages:
                if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(
                    message.get("content"), str
                ):
                    raise InvalidInput(
                        f"{path}:{lineno}: each message needs string 'role' and 'content'", field="messages"
                    )
            rows += 1
    if rows == 0:
        raise InvalidInput(f"{path} has no rows; it needs one JSON object with 'messages' per line")
    return rows


def train(
    spec: dict[str, Any], hp: Hyperparameters, files: JobFiles, run: MlflowRun | None, cancel: threading.Event
) -> tuple[str, dict[str, float]]:
    """Fine-tune, then save adapter + merged MLflow model under JOB_DIR/outputs; returns (status, final metrics)."""
    if cancel.is_set():
        return "Canceled", {}
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, EarlyStoppingCallback, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from forgeflow.training.callbacks import CancelCallback, ProgressCallback

    job_dir = files.job_dir
    use_cuda = torch.cuda.is_available()
    precision = resolve_precision(hp.precision, use_cuda)
    base = spec["base_model_path"]
    print(f"loading {spec.get('base_model') or base} ({precision}, {'cuda' if use_cuda else 'cpu'})", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(base)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)

    cache = job_dir / "cache"
    train_ds = load_chat_dataset(Path(spec["training_data"]), cache)
    eval_ds = None
    if hp.evaluation_strategy != "no" and spec.get("validation_data"):
        eval_ds = load_chat_dataset(Path(spec["validation_data"]), cache)
    elif hp.evaluation_strategy != "no":
        print("no validation data: evaluation is off", flush=True)
    eval_strategy = hp.evaluation_strategy if eval_ds is not None else "no"
    early_stopping = hp.apply_early_stopping and eval_ds is not None
    assistant_only = assistant_only_loss_supported(tokenizer)
    print(f"loss on {'assistant tokens only' if assistant_only else 'the full conversation'}", flush=True)

    eval_steps = (hp.eval_steps or hp.logging_steps) if eval_strategy == "steps" else None
    # Early stopping restores the best checkpoint, so it must save whenever it evaluates.
    if early_stopping:
        save_strategy, save_steps = eval_strategy, eval_steps or 500
    elif hp.max_steps > 0:
        save_strategy, save_steps = "steps", min(500, hp.max_steps)
    else:
        save_strategy, save_steps = "epoch", 500
    config = SFTConfig(
        output_dir=str(job_dir / "checkpoints"),
        num_train_epochs=hp.num_train_epochs,
        max_steps=hp.max_steps,
        per_device_train_batch_size=hp.per_device_train_batch_size,
        per_device_eval_batch_size=hp.per_device_eval_batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
        lr_scheduler_type=hp.lr_scheduler_type,
        warmup_steps=hp.warmup_steps,
        weight_decay=hp.weight_decay,
        optim=hp.optim,
        max_grad_norm=hp.max_grad_norm,
        max_length=hp.max_seq_length,
        seed=hp.seed,
        eval_strategy=eval_strategy,
        eval_steps=eval_steps,
        logging_strategy="steps",
        logging_steps=hp.logging_steps,
        save_strategy=save_strategy,
        save_steps=save_steps,
        save_total_limit=hp.save_total_limit,
        load_best_model_at_end=early_stopping,
        metric_for_best_model="eval_loss" if early_stopping else None,
        greater_is_better=False if early_stopping else None,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not use_cuda,
        activation_checkpointing=False,
        assistant_only_loss=assistant_only,
        packing=False,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    progress = ProgressCallback(files, run)
    callbacks: list[Any] = [progress, CancelCallback(cancel)]
    if early_stopping:
        callbacks.append(EarlyStoppingCallback(hp.early_stopping_patience, hp.early_stopping_threshold))
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=lora_config(hp) if hp.apply_lora else None,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    if cancel.is_set():
        return "Canceled", {}
    trainer.train(resume_from_checkpoint=hp.resume_from_checkpoint or None)
    if cancel.is_set():
        return "Canceled", _final_metrics(progress)
    if eval_ds is not None and progress.last_eval_step != trainer.state.global_step:
        trainer.evaluate()
    save_outputs(trainer, tokenizer, spec, hp, job_dir / "outputs")
    return "Completed", _final_metrics(progress)


def save_outputs(trainer: Any, tokenizer: Any, spec: dict[str, Any], hp: Hyperparameters, outputs: Path) -> Path:
    """Keep the adapter, merge it into the base and save the merged model in MLflow format."""
    from forgeflow.registry.mlflow_format import save_chat_model

    outputs.mkdir(parents=True, exist_ok=True)
    model = trainer.model
    adapter_dir = None
    if hp.apply_lora:
        adapter_dir = outputs / "adapter"
        model.save_pretrained(adapter_dir)
        tokenizer.save_pretrained(adapter_dir)
        model = model.merge_and_unload()
    stage = outputs / ".merged"
    shutil.rmtree(stage, ignore_errors=True)
    model.save_pretrained(stage)
    tokenizer.save_pretrained(stage)
    target = outputs / "mlflow_model"
    shutil.rmtree(target, ignore_errors=True)
    metadata = {"base_model": spec.get("base_model") or spec["base_model_path"], "job_id": spec.get("job_id")}
    try:
        save_chat_model(stage, target, adapter_dir=adapter_dir, metadata=metadata)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    print(f"saved {target}", flush=True)
    return target


def load_chat_dataset(path: Path, cache_dir: Path) -> Any:
    """The `messages` column of a chat JSONL file, through datasets' json builder."""
    from datasets import load_dataset

    dataset = load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache_dir))
    # Other columns (ultrachat's `prompt`) would make TRL treat rows as prompt-completion pairs.
    return dataset.select_columns(["messages"])


def lora_config(hp: Hyperparameters) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=LORA_TARGETS,
        bias="none",
        task_type="CAUSAL_LM",
    )


def assistant_only_loss_supported(tokenizer: Any) -> bool:
    """Whether TRL can mask non-assistant tokens for this chat template (it has, or TRL knows, generation markers)."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return False
    if has_generation_markers(template):
        return True
    try:
        get_training_chat_template(tokenizer)
    except ValueError:
        return False
    return True


def resolve_precision(precision: str, use_cuda: bool) -> str:
    """auto: fp32 on CPU, bf16 on a GPU that supports it, fp16 on older GPUs."""
    if precision == "auto":
        if not use_cuda:
            return "fp32"
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and not use_cuda:
        raise InvalidInput("precision fp16 needs a CUDA GPU; use fp32 or bf16 on CPU", field="precision")
    return precision


def one_line_error(exc: BaseException) -> str:
    if isinstance(exc, ForgeflowError):
        return exc.message.splitlines()[0] if exc.message else type(exc).__name__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _final_metrics(progress: Any) -> dict[str, float]:
    metrics = {k: progress.last[k] for k in ("train_loss", "eval_loss") if k in progress.last}
    if "train_runtime" in progress.summary:
        metrics["train_runtime"] = progress.summary["train_runtime"]
    if "num_tokens" in progress.last:
        metrics["trained_tokens"] = progress.last["num_tokens"]
    return metrics


def _install_sigterm(cancel: threading.Event) -> Any:
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        print("SIGTERM: stopping at the next step", flush=True)
        cancel.set()

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _quiet_environment() -> None:
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
