"""Fine-tuning hyperparameters, grouped like litgpt's `TrainArgs`/`EvalArgs` and validated once at the edge.

Users see Azure's flat names (`--set lora_r=8`, the REST body's `hyperparameters: {...}`, the YAML job file);
`resolve_hyperparameters` turns those into a `Hyperparameters` object of groups (LoRA, optimization, data,
memory, evaluation, checkpointing, scaling, method), naming the field that is wrong. The docstring under each field is its one
description: `GET /api/hyperparameters` and `forgeflow job create --help` show it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import annotated_types
import pydantic
from pydantic import BeforeValidator, ConfigDict, Field

from forgeflow.errors import InvalidInput

SchedulerType = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]
OptimizerName = Literal[
    "adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop", "adamw_bnb_8bit", "paged_adamw_8bit"
]


def _word(value: Any) -> Any:
    """`none`/`null`/empty mean None and `true`/`false` a bool, as `--set` and YAML strings spell them."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("", "none", "null"):
            return None
        if word in ("true", "false"):
            return word == "true"
    return value


Words = BeforeValidator(_word)


class _Group(pydantic.BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, allow_inf_nan=False)


class LoraArgs(_Group):
    """LoRA"""

    apply_lora: bool = True
    """Train a LoRA adapter instead of all weights."""
    lora_r: int = Field(8, gt=0)
    """Rank of the LoRA update matrices."""
    lora_alpha: int = Field(16, gt=0)
    """LoRA scaling numerator (scale = lora_alpha / lora_r)."""
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA input, in [0, 1); 0 skips drawing random masks (a third of a CPU step, bench/README.md)."""
    quantization: Literal["none", "4bit"] = "none"
    """Load the base model in 4-bit NF4 and train LoRA on it (QLoRA); needs a CUDA GPU."""

    @pydantic.model_validator(mode="after")
    def _qlora_is_lora(self) -> LoraArgs:
        if self.quantization != "none" and not self.apply_lora:
            raise ValueError(
                "quantization=4bit trains LoRA on a quantized base (QLoRA) and needs apply_lora=true; "
                "for a full fine-tune use quantization=none"
            )
        return self


class OptimArgs(_Group):
    """Optimization"""

    num_train_epochs: int = Field(1, gt=0)
    """Passes over the training data (ignored when max_steps > 0)."""
    max_steps: int = Field(-1, ge=-1)
    """Total optimizer steps; -1 trains for num_train_epochs."""
    per_device_train_batch_size: int = Field(4, gt=0)
    """Training examples per device per step."""
    gradient_accumulation_steps: int = Field(1, gt=0)
    """Micro-batches summed before each optimizer step."""
    learning_rate: float = Field(2e-4, gt=0)
    """Peak learning rate."""
    lr_scheduler_type: SchedulerType = "linear"
    """Learning-rate schedule after warmup."""
    warmup_steps: int = Field(0, ge=0)
    """Steps of linear warmup from 0 to learning_rate."""
    weight_decay: float = Field(0.0, ge=0)
    """Decoupled weight decay of the optimizer."""
    optim: OptimizerName = "adamw_torch"
    """Optimizer (transformers' name)."""
    max_grad_norm: float = Field(1.0, ge=0)
    """Gradient clipping norm; 0 disables clipping."""
    seed: int = Field(42, ge=0, le=2**32 - 1)
    """Random seed for initialisation and data order."""


class DataArgs(_Group):
    """Data"""

    max_seq_length: int = Field(512, gt=0)
    """Conversations are truncated to this many tokens."""
    packing: bool = True
    """Pack several conversations into each row (no attention across them)."""


class MemoryArgs(_Group):
    """Precision and memory"""

    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Training dtype; auto is fp32 on CPU and bf16 on a GPU that supports it."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, slower."""


class EvalArgs(_Group):
    """Evaluation and logging"""

    evaluation_strategy: Literal["no", "steps", "epoch"] = "epoch"
    """When to compute validation loss (needs validation data)."""
    eval_steps: Annotated[int | None, Words] = Field(None, gt=0)
    """Steps between evaluations; defaults to logging_steps."""
    per_device_eval_batch_size: int = Field(4, gt=0)
    """Validation examples per device per step."""
    logging_steps: int = Field(5, gt=0)
    """Steps between logged training metrics."""
    apply_early_stopping: bool = False
    """Stop when validation loss stops improving."""
    early_stopping_patience: int = Field(1, gt=0)
    """Evaluations without improvement before stopping."""
    early_stopping_threshold: float = Field(0.0, ge=0)
    """Smallest decrease of eval_loss that counts."""
    evaluate_against_base: bool = False
    """On completion, evaluate the fine-tune against its base model on the validation data (an evaluation job)."""

    @pydantic.model_validator(mode="after")
    def _early_stopping_evaluates(self) -> EvalArgs:
        if self.apply_early_stopping and self.evaluation_strategy == "no":
            raise ValueError("apply_early_stopping needs evaluation_strategy steps or epoch")
        return self


class CheckpointArgs(_Group):
    """Checkpoints"""

    save_steps: Annotated[int | None, Words] = Field(None, gt=0)
    """Steps between checkpoints; defaults to eval_steps when evaluating by steps, else 50."""
    save_total_limit: int = Field(1, gt=0)
    """Checkpoints kept on disk; older ones are deleted."""
    resume_from_checkpoint: Annotated[bool | str | None, Words] = None
    """Resume from the latest checkpoint (true) or from a checkpoint folder path."""


class ScalingArgs(_Group):
    """Scaling"""

    instance_count: int = Field(1, gt=0, le=1024)
    """Data-parallel workers (alias num_nodes_finetune), gradients averaged; above 1 needs a ray compute target."""


class MethodArgs(_Group):
    """Method"""

    method: Literal["sft", "dpo"] = "sft"
    """sft: supervised fine-tuning on chat rows; dpo: direct preference optimization on prompt/chosen/rejected rows."""
    beta: Annotated[float | None, Words] = Field(None, gt=0)
    """DPO's beta, how far the policy may move from the reference model (0.1 when not given); dpo only."""

    @pydantic.model_validator(mode="after")
    def _beta_is_dpo(self) -> MethodArgs:
        if self.beta is not None and self.method != "dpo":
            raise ValueError("beta is DPO's setting and needs method=dpo")
        return self


class Hyperparameters(pydantic.BaseModel, extra="forbid", frozen=True):
    """Settings of one chat-completion fine-tuning job; defaults suit a CPU LoRA run."""

    lora: LoraArgs = Field(default_factory=LoraArgs)
    optimization: OptimArgs = Field(default_factory=OptimArgs)
    data: DataArgs = Field(default_factory=DataArgs)
    memory: MemoryArgs = Field(default_factory=MemoryArgs)
    evaluation: EvalArgs = Field(default_factory=EvalArgs)
    checkpointing: CheckpointArgs = Field(default_factory=CheckpointArgs)
    scaling: ScalingArgs = Field(default_factory=ScalingArgs)
    method: MethodArgs = Field(default_factory=MethodArgs)

    def to_dict(self) -> dict[str, Any]:
        """Azure's flat names -> JSON values: what the job row, spec.json and the MLflow run's params hold."""
        return {name: value for group in GROUPS for name, value in getattr(self, group).model_dump(mode="json").items()}


GROUPS: dict[str, type[_Group]] = {name: info.annotation for name, info in Hyperparameters.model_fields.items()}
GROUP_OF: dict[str, str] = {field: group for group, cls in GROUPS.items() for field in cls.model_fields}
FIELDS: dict[str, pydantic.fields.FieldInfo] = {
    field: info for cls in GROUPS.values() for field, info in cls.model_fields.items()
}
FIELD_NAMES: tuple[str, ...] = tuple(FIELDS)
# What a fine-tuning form shows up front; the rest go under "advanced".
# Azure's other names for a setting: accepted on the way in, stored under forgeflow's name.
ALIASES = {"num_nodes_finetune": "instance_count"}
COMMON = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "apply_lora", "lora_r",
          "lora_alpha", "max_seq_length", "evaluation_strategy")


def resolve_hyperparameters(raw: dict[str, Any] | None = None) -> Hyperparameters:
    """Validate flat, Azure-named values (strings or typed) into Hyperparameters, naming the field that is wrong."""
    raw = dict(raw or {})
    for alias, name in ALIASES.items():
        if alias in raw:
            if name in raw:
                raise InvalidInput(f"{alias} is Azure's name for {name}: give one of them", field=alias)
            raw[name] = raw.pop(alias)
    grouped: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
    for name, value in raw.items():
        if name not in GROUP_OF:
            raise InvalidInput(f"unknown hyperparameter {name!r}: valid names are {', '.join(FIELD_NAMES)}", field=name)
        grouped[GROUP_OF[name]][name] = value
    try:
        return Hyperparameters(**grouped)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        if len(error["loc"]) < 2:  # a rule across fields of one group
            message = str(error["msg"]).removeprefix("Value error, ")
            raise InvalidInput(message, field=message.split("=")[0].split(" ")[0]) from None
        name = str(error["loc"][1])
        shown = f"{name}={raw[name]}: " if name in raw else ""
        parse_error = str(error["type"]).endswith(("_parsing", "_type", "from_float"))
        finite = " (not nan or inf)" if error["type"] == "finite_number" else ""
        raise InvalidInput(f"{shown}{name} must be {_expectation(name, parse_error)}{finite}", field=name) from None


def check_hardware(hp: Hyperparameters) -> None:
    """Refuse settings this machine cannot run (imports torch only when they need a GPU)."""
    quantization, precision = hp.lora.quantization, hp.memory.precision
    if quantization == "none" and precision != "fp16":
        return
    import torch

    if not torch.cuda.is_available():
        if quantization != "none":
            raise InvalidInput(
                f"quantization={quantization} (QLoRA) needs a CUDA GPU and this machine has none; "
                "valid values here: none (LoRA in full precision)",
                field="quantization",
            )
        raise InvalidInput("precision=fp16 needs a CUDA GPU; valid values here: auto, fp32, bf16", field="precision")
    if quantization != "none":
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise InvalidInput(
                "quantization=4bit needs the bitsandbytes package: pip install bitsandbytes", field="quantization"
            )


def describe_hyperparameters() -> list[dict[str, Any]]:
    """Every setting with its group, type, default, bounds in words and choices: what a form needs to show them."""
    out = []
    for name, info in FIELDS.items():
        annotation = info.annotation
        choices = [c for c in getattr(annotation, "__args__", ()) if isinstance(c, str)]
        if annotation is bool:
            kind = "boolean"
        elif choices and len(choices) == len(annotation.__args__):
            kind = "choice"
        elif annotation in (int, int | None):
            kind = "integer"
        elif annotation in (float, float | None):
            kind = "number"
        else:
            kind, choices = "string", []
        out.append({"name": name, "group": GROUPS[GROUP_OF[name]].__doc__, "type": kind, "default": info.default,
                    "description": info.description, "choices": choices or None,
                    "nullable": annotation in (int | None, float | None, bool | str | None), "valid": _expectation(name),
                    "common": name in COMMON})
    return sorted(out, key=lambda d: (not d["common"], COMMON.index(d["name"]) if d["common"] else 0))


def _expectation(name: str, parse_error: bool = False) -> str:
    """What a valid value of the field looks like, in words, from its type and (unless unparsable) its bounds."""
    info = FIELDS[name]
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
    return text + (" or none" if annotation in (int | None, float | None) else "")
