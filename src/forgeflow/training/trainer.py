"""The forgeflow Trainer: loss only where labels exist; and `JobMetrics`, which every forgeflow trainer (this one,
dpo.py's) shares: token counts, throughput and memory in every log, token counts kept in each checkpoint.

`compute_loss` runs the decoder, then the output head only on positions whose next token has a label
(`labelled_logits`, which an evaluation's loss uses too):
for a 135M model the vocabulary projection is a large share of the work, and prompt and padding
positions need no logits at all. Models that post-process logits (soft-capping, logit scale) fall back
to the full forward pass, and so does a data-parallel worker: DDP averages gradients only for a forward pass
through its wrapper.

Token counts are per process; in a data-parallel job the logged counts and tokens/s are summed over the workers,
and rank 0 writes the job's totals into each checkpoint (which a resumed rank 0 alone starts from).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from forgeflow.training.checkpoints import COUNTERS_FILE
from forgeflow.training.masking import IGNORE_INDEX
from forgeflow.training.parallel import summed

_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class JobMetrics:
    """What every forgeflow trainer adds to transformers' Trainer (put it first among the bases): token counts,
    throughput, ETA and peak memory in each training log, and the token counts carried in every checkpoint so a
    resumed job keeps counting. A subclass calls `count_tokens` with each training micro-batch's tokens as it
    computes its loss."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trained_tokens = 0
        self.loss_tokens = 0
        self._session_tokens = 0
        self._session_start: float | None = None
        self._session_start_step = 0

    def count_tokens(self, trained: int, loss: int) -> None:
        """Add one training micro-batch's token counts."""
        self.trained_tokens += trained
        self._session_tokens += trained
        self.loss_tokens += loss

    # -- metrics ----------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # every worker logs the loss at the same steps, so they can sum their counts here
            trained, loss_tokens, session = summed([self.trained_tokens, self.loss_tokens, self._session_tokens])
            logs["trained_tokens"] = trained
            logs["loss_tokens"] = loss_tokens
            logs.update(self._speed(session))
            logs["peak_memory_mb"] = peak_memory_mb()
        super().log(logs, start_time)

    def _speed(self, session_tokens: int) -> dict[str, float]:
        if self._session_start is None or not session_tokens:
            return {}
        elapsed = max(time.perf_counter() - self._session_start, 1e-6)
        out = {"train_tokens_per_second": round(session_tokens / elapsed, 2)}
        steps = self.state.global_step - self._session_start_step
        if steps > 0 and self.state.max_steps:
            out["eta_s"] = round(elapsed / steps * max(self.state.max_steps - self.state.global_step, 0), 1)
        return out

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        if self._session_start is None:
            self._session_start = time.perf_counter()
            self._session_start_step = self.state.global_step
        return super().training_step(model, inputs, num_items_in_batch)

    # -- checkpoints carry the counters so a resumed job keeps counting -----------
    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        # Written first: the trainer writes trainer_state.json last, which is what marks a checkpoint complete.
        trained, loss_tokens = summed([self.trained_tokens, self.loss_tokens])
        if self.is_world_process_zero():
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / COUNTERS_FILE).write_text(json.dumps({"trained_tokens": trained, "loss_tokens": loss_tokens}))
        super()._save_checkpoint(model, trial)

    def restore_counters(self, checkpoint: Path) -> None:
        if not self.is_world_process_zero():  # the saved counts are the job's totals: rank 0 carries them on
            return
        try:
            saved = json.loads((Path(checkpoint) / COUNTERS_FILE).read_text())
        except (OSError, ValueError):
            return
        self.trained_tokens = int(saved.get("trained_tokens", 0))
        self.loss_tokens = int(saved.get("loss_tokens", 0))


class ForgeflowTrainer(JobMetrics, Trainer):
    """transformers' Trainer with forgeflow's loss and metrics; expects PackedCollator batches."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Our loss divides by the number of label tokens in the whole accumulated batch itself.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True
        self.full_logits = False  # the benchmark's switch to measure what label-only logits save

    # -- loss -------------------------------------------------------------------
    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        real = inputs.pop("num_tokens", None)
        inputs.pop("num_loss_tokens", None)
        labels = inputs.pop("labels")
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        if model.training:
            self.count_tokens(int(real) if real is not None else 0, int(keep.sum()))
        unwrapped = self.accelerator.unwrap_model(model)
        logits = labelled_logits(model, inputs, keep, full=self.full_logits or unwrapped is not model)
        loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else keep.sum()
        loss = loss / torch.clamp(torch.as_tensor(count, device=loss.device), min=1)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices and self.args.world_size > 1:
            # `count` is every worker's label tokens and DDP averages the workers' gradients: scaled back up by the
            # number of workers, the gradient and the logged loss (the workers' mean) are those of the whole batch.
            loss = loss * self.args.world_size
        return (loss, {"loss": loss}) if return_outputs else loss


def labelled_logits(model: Any, inputs: dict[str, Any], keep: torch.Tensor, *, full: bool = False) -> torch.Tensor:
    """The logits predicting each labelled token: at the positions `keep` marks (over positions 1.., i.e. `labels[:,
    1:] != IGNORE_INDEX`), shape (labelled tokens, vocabulary). The output head runs only there; `full` (or a model
    without a separate decoder, or one that post-processes its logits) runs the whole forward pass instead."""
    head_model = _causal_lm(model)
    decoder = head_model.get_decoder() if hasattr(head_model, "get_decoder") else None
    if full or decoder is None or any(getattr(head_model.config, k, None) for k in _LOGIT_POSTPROCESSING):
        return model(**inputs, use_cache=False).logits[:, :-1][keep]
    hidden = decoder(**inputs, use_cache=False).last_hidden_state
    return head_model.get_output_embeddings()(hidden[:, :-1][keep])


def _causal_lm(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (LoRA layers are injected into it, so calling it trains them)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def peak_memory_mb() -> float:
    """Peak memory of this process: CUDA allocator peak on a GPU, else peak resident set size."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)
