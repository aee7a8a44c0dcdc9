"""The training worker: one process per fine-tuning job, `python -m forgeflow.training.worker JOB_DIR`.

Reads the job file JOB_DIR/spec.json (`jobs.JobSpec`, written by the job runner), trains a LoRA adapter (QLoRA on
a GPU, or all weights) on chat `messages` data with loss on assistant turns only and packed rows (masking.py,
packing.py, trainer.py), merges it into the base model and saves the result in MLflow format under JOB_DIR/outputs.
Checkpoints go to JOB_DIR/checkpoints; `"resume": true` in spec.json continues from the newest one. Progress goes to
JOB_DIR/status.json, JOB_DIR/metrics.jsonl, an MLflow run and stdout. SIGTERM stops training at the next step:
status Canceled, exit 0. Any error: status Failed, exit 1.

`train` also runs in each worker of a data-parallel job (`distributed.py`): there every worker trains, and rank 0
alone writes the record and the model.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable

from forgeflow import __version__
from forgeflow.errors import ForgeflowError, InvalidInput, NotFound
from forgeflow.store.states import JobStatus
from forgeflow.training.checkpoints import checkpoint_step, newest_checkpoint, remove_incomplete
from forgeflow.training.dataset import iter_messages, prepare
from forgeflow.training.hyperparams import Hyperparameters, LoraArgs, check_hardware
from forgeflow.training.jobs import JobSpec
from forgeflow.training.parallel import any_worker
from forgeflow.training.tracking import Attempt, JobFiles, MlflowRun, read_status

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Set by a compute that runs workers on other machines: the forgeflow version of the server that queued the job.
VERSION_ENV = "FORGEFLOW_VERSION"
Train = Callable[[JobSpec, JobFiles, MlflowRun | None, Attempt], tuple[JobStatus, dict[str, float]]]


def run_job(job_dir: Path, train_with: Train | None = None) -> int:
    """Run the job in JOB_DIR to its end, training with `train_with` (default `train`, here); returns the process
    exit code (0 done, canceled or superseded, 1 failed)."""
    quiet_environment()
    files = JobFiles(Path(job_dir))
    previous = read_status(files.job_dir) or {}
    attempt = Attempt.begin(files, threading.Event())
    files.write_status(JobStatus.RUNNING, error=None)
    restore = stop_on_sigterm(attempt.event)
    run: MlflowRun | None = None
    try:
        check_version()
        spec = JobSpec.read(files.job_dir)
        if spec.resume and previous.get("mlflow_run_id"):
            run = MlflowRun.reopen(spec, previous["mlflow_run_id"])
        if run is None:
            run = MlflowRun.start(spec)
        files.write_status(mlflow_run_id=run.run_id)
        check_chat_jsonl(Path(spec.training_data))
        if spec.validation_data:
            check_chat_jsonl(Path(spec.validation_data))
        status, metrics = (train_with or train)(spec, files, run, attempt)
        if attempt.superseded:
            print("stopped: a newer start of this job took over its folder", flush=True)
            return 0
        files.write_status(status, metrics=metrics)
        print(f"job {status.lower()}", flush=True)
        run.end(status)
        return 0
    except Exception as exc:
        traceback.print_exc()
        if attempt.superseded:  # the error may be the newer start's doing (its record, its MLflow run): leave both
            print("stopped: a newer start of this job took over its folder", flush=True)
            return 0
        files.write_status(JobStatus.FAILED, error=one_line_error(exc))
        if run is not None and files.record:
            try:
                run.end(JobStatus.FAILED)
            except Exception:
                traceback.print_exc()
        return 1
    finally:
        restore()


def check_version() -> None:
    """A worker started on another machine refuses to run a job queued by a different forgeflow."""
    wanted = os.environ.get(VERSION_ENV)
    if wanted and wanted != __version__:
        raise ForgeflowError(f"this node runs forgeflow {__version__} but the server that queued the job runs "
                             f"{wanted}: install forgeflow=={wanted} on every node of the cluster")


def check_chat_jsonl(path: Path) -> int:
    """Check that every line of a chat JSONL file has a non-empty `messages` list; returns the row count."""
    return sum(1 for _ in iter_messages(path))


def train(
    spec: JobSpec, files: JobFiles, run: MlflowRun | None, cancel: Attempt
) -> tuple[JobStatus, dict[str, float]]:
    """Fine-tune, then save adapter + merged MLflow model under JOB_DIR/outputs; returns (status, final metrics).
    `cancel.is_set()` asks to stop; the workers of a data-parallel job ask it together (`any_worker`)."""
    check_hardware(spec.hyperparameters)
    if any_worker(cancel.is_set()):
        return JobStatus.CANCELED, {}
    import torch
    from transformers import (
        AutoTokenizer,
        EarlyStoppingCallback,
        PrinterCallback,
        TrainingArguments,
        set_seed,
    )

    from forgeflow.training.callbacks import CancelCallback, ProgressCallback
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
    progress = ProgressCallback(files, run)
    callbacks: list[Any] = [progress, CancelCallback(cancel)]
    if hp.evaluation.apply_early_stopping and eval_data is not None:
        callbacks.append(
            EarlyStoppingCallback(hp.evaluation.early_stopping_patience, hp.evaluation.early_stopping_threshold)
        )
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
    if any_worker(cancel.is_set()):
        return JobStatus.CANCELED, {}
    if checkpoint is not None:
        step = checkpoint_step(checkpoint)
        files.drop_metrics_after(step)
        trainer.restore_counters(checkpoint)
        print(f"resuming from {checkpoint.name} (step {step})", flush=True)
    else:
        files.drop_metrics_after(-1)
        if eval_data is not None:
            trainer.evaluate()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if any_worker(cancel.is_set()):
        return JobStatus.CANCELED, _final_metrics(progress)
    if eval_data is not None and progress.last_eval_step != trainer.state.global_step:
        trainer.evaluate()
    if trainer.state.best_model_checkpoint:
        print(f"exporting the best checkpoint: {Path(trainer.state.best_model_checkpoint).name} "
              f"(eval_loss {trainer.state.best_metric:.4g})", flush=True)
    if trainer.is_world_process_zero():
        save_outputs(trainer, tokenizer, spec, job_dir / "outputs")
    return JobStatus.COMPLETED, {**data_metrics, **_final_metrics(progress)}


def load_model(base: str, hp: Hyperparameters, precision: str, use_cuda: bool) -> Any:
    """The base model, quantized for QLoRA, wrapped with a LoRA adapter unless it is a full fine-tune."""
    import torch
    from transformers import AutoModelForCausalLM

    compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    lora = hp.lora
    kwargs: dict[str, Any] = {}
    if lora.quantization == "4bit":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
        kwargs["device_map"] = {"": 0}
    # LoRA on a GPU keeps the frozen base in the half dtype; a full fine-tune keeps fp32 master weights and
    # autocasts; on CPU weights stay fp32 and bf16 (when asked for) is autocast matmul.
    half_base = use_cuda and lora.apply_lora and precision in ("bf16", "fp16")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=compute_dtype if half_base else torch.float32, **kwargs)
    model.config.use_cache = False
    if lora.quantization == "4bit":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=hp.memory.gradient_checkpointing)
    if lora.apply_lora:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(lora))
    return model


def training_arguments(
    cls: Any, hp: Hyperparameters, job_dir: Path, precision: str, use_cuda: bool, evaluating: bool
) -> Any:
    """transformers TrainingArguments for the job; evaluation, checkpoints and best-model export line up."""
    opt, ev, ckpt, memory = hp.optimization, hp.evaluation, hp.checkpointing, hp.memory
    eval_strategy = ev.evaluation_strategy if evaluating else "no"
    eval_steps = (ev.eval_steps or ev.logging_steps) if eval_strategy == "steps" else None
    if eval_strategy == "epoch":
        save_strategy, save_steps = "epoch", ckpt.save_steps or 50
    elif eval_strategy == "steps":
        # load_best_model_at_end needs checkpoints on evaluation steps: round save_steps up to a multiple.
        wanted = ckpt.save_steps or eval_steps
        save_strategy, save_steps = "steps", -(-wanted // eval_steps) * eval_steps
    else:
        save_strategy, save_steps = "steps", ckpt.save_steps or 50
    return cls(
        output_dir=str(job_dir / "checkpoints"),
        num_train_epochs=opt.num_train_epochs,
        max_steps=opt.max_steps,
        per_device_train_batch_size=opt.per_device_train_batch_size,
        per_device_eval_batch_size=ev.per_device_eval_batch_size,
        gradient_accumulation_steps=opt.gradient_accumulation_steps,
        learning_rate=opt.learning_rate,
        lr_scheduler_type=opt.lr_scheduler_type,
        warmup_steps=opt.warmup_steps,
        weight_decay=opt.weight_decay,
        optim=opt.optim,
        max_grad_norm=opt.max_grad_norm,
        seed=opt.seed,
        eval_strategy=eval_strategy,
        eval_steps=eval_steps,
        logging_strategy="steps",
        logging_steps=ev.logging_steps,
        save_strategy=save_strategy,
        save_steps=save_steps,
        save_total_limit=ckpt.save_total_limit,
        load_best_model_at_end=evaluating,
        metric_for_best_model="eval_loss" if evaluating else None,
        greater_is_better=False if evaluating else None,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not use_cuda,
        activation_checkpointing=memory.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if memory.gradient_checkpointing else None,
        remove_unused_columns=False,
        prediction_loss_only=True,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # data-parallel workers: every trainable weight gets a gradient
    )


def find_resume_checkpoint(spec: JobSpec, checkpoints: Path) -> Path | None:
    """The checkpoint to continue from: spec `resume` (set by `forgeflow job resume`) or resume_from_checkpoint."""
    wanted = spec.hyperparameters.checkpointing.resume_from_checkpoint
    if isinstance(wanted, str):
        path = Path(wanted)
        if not path.is_dir():
            raise NotFound(f"resume_from_checkpoint={path}: no such checkpoint folder", field="resume_from_checkpoint")
        return path
    if not (spec.resume or wanted):
        return None
    for name in remove_incomplete(checkpoints):
        print(f"removed {name}: it was half-written when the worker stopped", flush=True)
    last = newest_checkpoint(checkpoints)
    if last is None:
        print(f"resume asked but there is no complete checkpoint under {checkpoints}: starting over", flush=True)
    return last


def save_outputs(trainer: Any, tokenizer: Any, spec: JobSpec, outputs: Path) -> Path:
    """Keep the adapter, merge it into the base and save the merged model in MLflow format."""
    from forgeflow.registry.mlflow_format import save_chat_model

    outputs.mkdir(parents=True, exist_ok=True)
    model = trainer.model
    lora = spec.hyperparameters.lora
    adapter_dir = None
    if lora.apply_lora:
        adapter_dir = outputs / "adapter"
        model.save_pretrained(adapter_dir)
        tokenizer.save_pretrained(adapter_dir)
        if lora.quantization != "none":
            model = _merge_into_full_precision(spec.base_model_path, adapter_dir, model)
        else:
            model = model.merge_and_unload()
    stage = outputs / ".merged"
    shutil.rmtree(stage, ignore_errors=True)
    model.save_pretrained(stage)
    tokenizer.save_pretrained(stage)
    target = outputs / "mlflow_model"
    shutil.rmtree(target, ignore_errors=True)
    metadata = {"base_model": spec.base_model, "job_id": spec.job_id or None}
    try:
        save_chat_model(stage, target, adapter_dir=adapter_dir, metadata=metadata)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    print(f"saved {target}", flush=True)
    return target


def _merge_into_full_precision(base: str, adapter_dir: Path, trained: Any) -> Any:
    """QLoRA: merge the adapter into the base loaded in its training dtype, not into the 4-bit weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = trained.get_base_model().config.dtype
    del trained
    full = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    return PeftModel.from_pretrained(full, adapter_dir).merge_and_unload()


def lora_config(lora: LoraArgs) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=lora.lora_r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=LORA_TARGETS,
        bias="none",
        task_type="CAUSAL_LM",
    )


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
    for key in ("trained_tokens", "loss_tokens", "train_tokens_per_second", "peak_memory_mb"):
        if key in progress.last:
            metrics[key] = progress.last[key]
    return metrics


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
