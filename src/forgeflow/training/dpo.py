"""Preference fine-tuning (direct preference optimization): `worker.train` hands a job whose method is dpo here.

TRL's DPOTrainer is the engine: it tokenizes each preference row (`data/validate.iter_preferences`: the prompt with
the chosen and with the rejected answer, through the model's chat template) and trains the policy to raise the
chosen answer's log-probability over the rejected one's, relative to a reference model, with the loss scaled by
`beta`. With LoRA (the default, as for supervised fine-tuning) the reference is the base model with the adapter
disabled, so no second copy is loaded; a full fine-tune's reference is a copy of the base TRL loads.

The job runs as a supervised one does: the same hyperparameters where they apply (max_seq_length is TRL's
max_length; rows are never packed, `jobfile.check_method`), progress and curves through callbacks.py (TRL's
`rewards/margins` is recorded as rewards_margins), cancel at the next step, checkpoints and resume, and the merged
model saved as the same MLflow model folder (finetune.py).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from trl import DPOConfig, DPOTrainer

from forgeflow.data.validate import iter_preferences
from forgeflow.errors import InvalidInput
from forgeflow.store.states import JobStatus
from forgeflow.training.finetune import (
    find_resume_checkpoint,
    fit,
    job_callbacks,
    load_model,
    lora_config,
    resolve_precision,
    training_arguments,
)
from forgeflow.training.jobfile import check_method
from forgeflow.training.jobs import JobSpec
from forgeflow.training.parallel import any_worker
from forgeflow.training.tracking import Attempt, JobFiles, MlflowRun
from forgeflow.training.trainer import JobMetrics


class PreferenceTrainer(JobMetrics, DPOTrainer):
    """TRL's DPOTrainer with forgeflow's job metrics: trained_tokens counts every token of both sequences of a pair
    (prompt and answer), loss_tokens the answers' tokens the log-probabilities are summed over."""

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        if model.training:
            self.count_tokens(int(inputs["attention_mask"].sum()), int(inputs["completion_mask"].sum()))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """No hub model card in the checkpoints folder: the job's model is its MLflow folder."""


def train_preferences(
    spec: JobSpec, files: JobFiles, run: MlflowRun | None, cancel: Attempt
) -> tuple[JobStatus, dict[str, float]]:
    """DPO on the job's preference rows, then save adapter + merged MLflow model under JOB_DIR/outputs; returns
    (status, final metrics). `cancel.is_set()` asks to stop, as in `worker.train`."""
    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback, set_seed

    # TRL asks the model a name transformers 5 deprecated, at every reference pass: noise in worker.log.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    if any_worker(cancel.is_set()):
        return JobStatus.CANCELED, {}
    job_dir = files.job_dir
    hp = check_method(spec.hyperparameters)
    use_cuda = torch.cuda.is_available()
    precision = resolve_precision(hp.memory.precision, use_cuda)
    kind = "full fine-tune" if not hp.lora.apply_lora else ("QLoRA" if hp.lora.quantization != "none" else "LoRA")
    print(f"loading {spec.base_model} (DPO, beta {hp.method.beta}, {kind}, {precision}, "
          f"{'cuda' if use_cuda else 'cpu'})", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(spec.base_model_path)
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidInput("the base model's tokenizer has no chat template; pick a chat (instruct) model")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_rows = Dataset.from_list(list(iter_preferences(Path(spec.training_data), "training_data")))
    eval_rows = None
    evaluating = hp.evaluation.evaluation_strategy != "no"
    if evaluating and spec.validation_data:
        eval_rows = Dataset.from_list(list(iter_preferences(Path(spec.validation_data), "validation_data")))
    elif evaluating:
        print("no validation data: evaluation is off", flush=True)

    set_seed(hp.optimization.seed)
    model = load_model(spec.base_model_path, hp, precision, use_cuda, with_adapter=False)
    checkpoint = find_resume_checkpoint(spec, job_dir / "checkpoints")
    config = training_arguments(
        DPOConfig, hp, job_dir, precision, use_cuda, eval_rows is not None,
        beta=hp.method.beta,
        max_length=hp.data.max_seq_length,
        # TRL turns dropout off so the policy and its reference score a pair alike; lora_dropout > 0 asks for it.
        disable_dropout=hp.lora.lora_dropout == 0,
    )
    progress, callbacks = job_callbacks(hp, files, run, cancel, eval_rows is not None)
    trainer = PreferenceTrainer(
        model=model,
        ref_model=None,
        args=config,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=lora_config(hp.lora) if hp.lora.apply_lora else None,
    )
    trainer.remove_callback(PrinterCallback)
    data_metrics = _pair_counts(len(train_rows), trainer.train_dataset, hp.data.max_seq_length, "training data")
    if eval_rows is not None:
        _pair_counts(len(eval_rows), trainer.eval_dataset, hp.data.max_seq_length, "validation data")
    files.write_status(metrics=data_metrics)
    if run is not None:
        run.log_metrics(data_metrics, step=0)
    # At step 0 the policy is its reference, so the first evaluation's rewards are all 0.
    return fit(trainer, progress, files=files, spec=spec, tokenizer=tokenizer, checkpoint=checkpoint,
               evaluating=eval_rows is not None, cancel=cancel, data_metrics=data_metrics)


def _pair_counts(rows: int, prepared: Any, max_length: int, name: str) -> dict[str, int]:
    """Print what TRL kept of the rows and return the training counts; no pair left is an error naming
    max_seq_length (TRL drops a pair whose prompt alone fills it, and cuts the rest to it)."""
    kept = len(prepared)
    if kept == 0:
        raise InvalidInput(f"{name}: every prompt is at least max_seq_length={max_length} tokens long, so no answer "
                           "is left to learn from: raise max_seq_length", field="max_seq_length")
    truncated = sum(
        len(p) + max(len(c), len(r)) > max_length
        for p, c, r in zip(prepared["prompt_ids"], prepared["chosen_ids"], prepared["rejected_ids"])
    )
    text = f"{name}: {rows} preference pairs"
    if truncated:
        text += f"; {truncated} longer than max_seq_length={max_length} were truncated"
    if rows - kept:
        text += f"; {rows - kept} whose prompt alone fills max_seq_length were dropped"
    print(text, flush=True)
    return {"train_pairs": rows, "truncated_pairs": truncated}
