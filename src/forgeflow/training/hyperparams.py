"""Fine-tuning hyperparameters under Azure's names, validated once at the edge.

The same model validates `--set name=value` on the CLI, the REST job body and the YAML job file;
the training worker maps it onto TRL's `SFTConfig` and PEFT's `LoraConfig`.
"""

from __future__ import annotations

from typing import Any, Literal

import annotated_types
import pydantic
from pydantic import Field

from forgeflow.errors import InvalidInput

SchedulerType = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]
OptimizerName = Literal[
    "adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop", "adamw_bnb_8bit", "paged_adamw_8bit"
]
_NONE_WORDS = {"", "none", "null"}


class Hyperparameters(pydantic.BaseModel, extra="forbid", validate_assignment=True):
    """Settings of one chat-completion fine-tuning job; defaults suit a CPU LoRA run."""

    apply_lora: bool = Field(True, description="Train a LoRA adapter instead of all weights.")
    lora_r: int = Field(8, gt=0, description="Rank of the LoRA update matrices.")
    lora_alpha: int = Field(16, gt=0, description="LoRA scaling numerator (scale = lora_alpha / lora_r).")
    lora_dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout on the LoRA input, in [0, 1). 0 skips drawing random masks, a third "
        "of a CPU training step's time (bench/README.md); raise it when a long run overfits."
    )
    quantization: Literal["none", "4bit"] = Field(
        "none", description="Load the base model in 4-bit NF4 and train LoRA on it (QLoRA); needs a CUDA GPU."
    )
    num_train_epochs: int = Field(1, gt=0, description="Passes over the training data (ignored when max_steps > 0).")
    max_steps: int = Field(-1, ge=-1, description="Total optimizer steps; -1 trains for num_train_epochs.")
    per_device_train_batch_size: int = Field(4, gt=0, description="Training examples per device per step.")
    per_device_eval_batch_size: int = Field(4, gt=0, description="Validation examples per device per step.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches summed before each optimizer step.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    lr_scheduler_type: SchedulerType = Field("linear", description="Learning-rate schedule after warmup.")
    warmup_steps: int = Field(0, ge=0, description="Steps of linear warmup from 0 to learning_rate.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay of the optimizer.")
    optim: OptimizerName = Field("adamw_torch", description="Optimizer (transformers' name).")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm; 0 disables clipping.")
    max_seq_length: int = Field(512, gt=0, description="Conversations are truncated to this many tokens.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Training dtype; auto is fp32 on CPU and bf16 on a GPU that supports it."
    )
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Random seed for initialisation and data order.")
    evaluation_strategy: Literal["no", "steps", "epoch"] = Field(
        "epoch", description="When to compute validation loss (needs validation data)."
    )
    eval_steps: int | None = Field(None, gt=0, description="Steps between evaluations; defaults to logging_steps.")
    logging_steps: int = Field(5, gt=0, description="Steps between logged training metrics.")
    save_steps: int | None = Field(
        None, gt=0, description="Steps between checkpoints; defaults to eval_steps when evaluating by steps, else 50."
    )
    save_total_limit: int = Field(1, gt=0, description="Checkpoints kept on disk; older ones are deleted.")
    apply_early_stopping: bool = Field(False, description="Stop when validation loss stops improving.")
    early_stopping_patience: int = Field(1, gt=0, description="Evaluations without improvement before stopping.")
    early_stopping_threshold: float = Field(0.0, ge=0, description="Smallest decrease of eval_loss that counts.")
    packing: bool = Field(True, description="Pack several conversations into each row (no attention across them).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward: less memory, slower.")
    resume_from_checkpoint: bool | str | None = Field(
        None, description="Resume from the latest checkpoint (true) or from a checkpoint folder path."
    )

    @pydantic.field_validator("eval_steps", "save_steps", "resume_from_checkpoint", mode="before")
    @classmethod
    def _words(cls, value: Any) -> Any:
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _NONE_WORDS:
                return None
            if word in {"true", "false"}:
                return word == "true"
        return value

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> "Hyperparameters":
        if self.apply_early_stopping and self.evaluation_strategy == "no":
            raise ValueError("apply_early_stopping needs evaluation_strategy steps or epoch")
        if self.quantization != "none" and not self.apply_lora:
            raise ValueError(
                "quantization=4bit trains LoRA on a quantized base (QLoRA) and needs apply_lora=true; "
                "for a full fine-tune use quantization=none"
            )
        return self


FIELD_NAMES: tuple[str, ...] = tuple(Hyperparameters.model_fields)
# What a fine-tuning form shows up front; the rest go under "advanced".
COMMON = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "apply_lora", "lora_r",
          "lora_alpha", "max_seq_length", "evaluation_strategy")


def describe_hyperparameters() -> list[dict[str, Any]]:
    """Every setting with its type, default, bounds in words and choices: what a form needs to show them."""
    out = []
    for name, info in Hyperparameters.model_fields.items():
        annotation = info.annotation
        choices = [c for c in getattr(annotation, "__args__", ()) if isinstance(c, str)]
        if annotation is bool:
            kind = "boolean"
        elif choices and len(choices) == len(annotation.__args__):
            kind = "choice"
        elif annotation in (int, int | None):
            kind = "integer"
        elif annotation is float:
            kind = "number"
        else:
            kind, choices = "string", []
        out.append({"name": name, "type": kind, "default": info.default, "description": info.description,
                    "choices": choices or None, "nullable": annotation in (int | None, bool | str | None),
                    "valid": _expectation(name), "common": name in COMMON})
    return sorted(out, key=lambda d: (not d["common"], COMMON.index(d["name"]) if d["common"] else 0))


def parse_set_options(items: list[str]) -> dict[str, str]:
    """Turn CLI `--set name=value` strings into a raw dict; pydantic coerces the values later."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InvalidInput(f"--set {item}: expected name=value, e.g. --set learning_rate=2e-4", field="set")
        out[name.strip()] = value.strip()
    return out


def resolve_hyperparameters(raw: dict[str, Any] | None = None) -> Hyperparameters:
    """Validate raw values (strings or typed) into Hyperparameters, naming the field that is wrong."""
    raw = dict(raw or {})
    for name in raw:
        if name not in Hyperparameters.model_fields:
            raise InvalidInput(
                f"unknown hyperparameter {name!r}: valid names are {', '.join(FIELD_NAMES)}", field=name
            )
    try:
        hp = Hyperparameters(**raw)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        if not error["loc"]:
            message = str(error["msg"]).removeprefix("Value error, ")
            raise InvalidInput(message, field=message.split("=")[0].split(" ")[0]) from None
        name = str(error["loc"][0])
        shown = f"{name}={raw[name]}: " if name in raw else ""
        parse_error = str(error["type"]).endswith(("_parsing", "_type", "from_float"))
        raise InvalidInput(f"{shown}{name} must be {_expectation(name, parse_error)}", field=name) from None
    check_hardware(hp)
    return hp


def check_hardware(hp: Hyperparameters) -> None:
    """Refuse settings this machine cannot run, before a worker starts (imports torch only when needed)."""
    if hp.quantization == "none" and hp.precision != "fp16":
        return
    import torch

    if not torch.cuda.is_available():
        if hp.quantization != "none":
            raise InvalidInput(
                f"quantization={hp.quantization} (QLoRA) needs a CUDA GPU and this machine has none; "
                "valid values here: none (LoRA in full precision)",
                field="quantization",
            )
        raise InvalidInput("precision=fp16 needs a CUDA GPU; valid values here: auto, fp32, bf16", field="precision")
    if hp.quantization != "none":
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise InvalidInput(
                "quantization=4bit needs the bitsandbytes package: pip install bitsandbytes", field="quantization"
            )


def _expectation(name: str, parse_error: bool = False) -> str:
    """What a valid value of the field looks like, in words, from its type and (unless unparsable) its bounds."""
    info = Hyperparameters.model_fields[name]
    annotation = info.annotation
    choices = getattr(annotation, "__args__", ())
    if choices and all(isinstance(c, str) for c in choices):
        return "one of " + ", ".join(choices)
    if annotation is bool:
        return "true or false"
    if name == "resume_from_checkpoint":
        return "true, false or a checkpoint folder path"
    noun = "integer" if annotation in (int, int | None) else "number"
    bounds = {type(m).__name__: m for m in info.metadata}
    if parse_error:
        return ("an integer" if noun == "integer" else "a number") + (" or none" if annotation == int | None else "")
    if "Gt" in bounds and bounds["Gt"].gt == 0:
        text = f"a positive {noun}"
    elif "Ge" in bounds and bounds["Ge"].ge == 0:
        text = f"a non-negative {noun}"
    elif "Ge" in bounds:
        text = f"{bounds['Ge'].ge} or a positive {noun}" if bounds["Ge"].ge == -1 else f"a {noun} >= {bounds['Ge'].ge}"
    else:
        text = f"a {noun}"
    if isinstance(bounds.get("Lt"), annotated_types.Lt):
        text += f" below {bounds['Lt'].lt}"
    if isinstance(bounds.get("Le"), annotated_types.Le):
        text += f" up to {bounds['Le'].le}"
    return text + (" or none" if annotation == int | None else "")


def describe() -> dict[str, str]:
    """Field name -> one-line description, for `--help` and the Studio form."""
    return {name: info.description or "" for name, info in Hyperparameters.model_fields.items()}
