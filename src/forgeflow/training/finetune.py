"""What supervised (worker.py) and preference (dpo.py) fine-tuning share: the base model loaded for training, with or
without its LoRA adapter; transformers' TrainingArguments (or a subclass such as TRL's DPOConfig) from the
hyperparameters; the checkpoint a job continues from; and the trained model saved as the MLflow model folder that
`model create --from-job`, deployments and export read."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from forgeflow.errors import InvalidInput, NotFound
from forgeflow.training.checkpoints import newest_checkpoint, remove_incomplete
from forgeflow.training.hyperparams import Hyperparameters, LoraArgs
from forgeflow.training.jobs import JobSpec

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_model(base: str, hp: Hyperparameters, precision: str, use_cuda: bool, *, with_adapter: bool = True) -> Any:
    """The base model, quantized for QLoRA, wrapped with a LoRA adapter unless it is a full fine-tune or
    `with_adapter` is false (a trainer that wraps it itself, from `lora_config`)."""
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
    if lora.apply_lora and with_adapter:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(lora))
    return model


def training_arguments(
    cls: Any, hp: Hyperparameters, job_dir: Path, precision: str, use_cuda: bool, evaluating: bool, **extra: Any
) -> Any:
    """transformers TrainingArguments (or `cls`, a subclass) for the job; evaluation, checkpoints and best-model
    export line up. `extra` are the subclass's own settings."""
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
        **extra,
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


def job_callbacks(hp: Hyperparameters, files: Any, run: Any, cancel: Any, evaluating: bool) -> tuple[Any, list[Any]]:
    """The callbacks every method's trainer runs with: progress and curves, cancel, early stopping when asked."""
    from transformers import EarlyStoppingCallback

    from forgeflow.training.callbacks import CancelCallback, ProgressCallback

    progress = ProgressCallback(files, run)
    callbacks: list[Any] = [progress, CancelCallback(cancel)]
    if hp.evaluation.apply_early_stopping and evaluating:
        callbacks.append(
            EarlyStoppingCallback(hp.evaluation.early_stopping_patience, hp.evaluation.early_stopping_threshold)
        )
    return progress, callbacks


def fit(trainer: Any, progress: Any, *, files: Any, spec: JobSpec, tokenizer: Any, checkpoint: Path | None,
        evaluating: bool, cancel: Any, data_metrics: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """What every method does once its trainer is built: continue a checkpoint's counters (or evaluate at step 0),
    train, evaluate at the last step, and save the outputs (the best checkpoint when early stopping kept one).
    Returns the job's end status and final metrics."""
    from forgeflow.store.states import JobStatus
    from forgeflow.training.checkpoints import checkpoint_step
    from forgeflow.training.parallel import any_worker

    if any_worker(cancel.is_set()):
        return JobStatus.CANCELED, {}
    if checkpoint is not None:
        step = checkpoint_step(checkpoint)
        files.drop_metrics_after(step)
        trainer.restore_counters(checkpoint)
        print(f"resuming from {checkpoint.name} (step {step})", flush=True)
    else:
        files.drop_metrics_after(-1)
        if evaluating:
            trainer.evaluate()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if any_worker(cancel.is_set()):
        return JobStatus.CANCELED, progress.final_metrics()
    if evaluating and progress.last_eval_step != trainer.state.global_step:
        trainer.evaluate()
    if trainer.state.best_model_checkpoint:
        print(f"exporting the best checkpoint: {Path(trainer.state.best_model_checkpoint).name} "
              f"(eval_loss {trainer.state.best_metric:.4g})", flush=True)
    if trainer.is_world_process_zero():
        save_outputs(trainer, tokenizer, spec, Path(files.job_dir) / "outputs")
    return JobStatus.COMPLETED, {**data_metrics, **progress.final_metrics()}

