from __future__ import annotations

import pytest

from forgeflow.errors import InvalidInput
from forgeflow.names import parse_assignments
from forgeflow.training.hyperparams import (
    FIELD_NAMES,
    GROUPS,
    Hyperparameters,
    check_hardware,
    describe_hyperparameters,
    resolve_hyperparameters,
)


def test_defaults_suit_a_cpu_lora_run():
    hp = resolve_hyperparameters({})
    assert hp.lora.apply_lora and hp.lora.lora_r == 8 and hp.lora.lora_alpha == 16
    opt = hp.optimization
    assert opt.learning_rate == 2e-4 and opt.lr_scheduler_type == "linear" and opt.max_steps == -1
    assert hp.memory.precision == "auto" and hp.evaluation.evaluation_strategy == "epoch"
    assert hp.checkpointing.resume_from_checkpoint is None


def test_every_field_has_one_group_and_a_docstring():
    grouped = [name for group in GROUPS.values() for name in group.model_fields]
    assert sorted(grouped) == sorted(set(grouped)) == sorted(FIELD_NAMES)
    assert set(GROUPS) == set(Hyperparameters.model_fields)
    described = {row["name"]: row["description"] for row in describe_hyperparameters()}
    assert set(described) == set(FIELD_NAMES) and all(described.values())
    assert described["lora_r"] == "Rank of the LoRA update matrices."  # the field's docstring


def test_groups_in_and_flat_names_out():
    hp = resolve_hyperparameters({"lora_r": "16", "learning_rate": "1e-3", "save_steps": "25"})
    assert hp.lora.lora_r == 16 and hp.optimization.learning_rate == 1e-3 and hp.checkpointing.save_steps == 25
    flat = hp.to_dict()
    assert list(flat) == list(FIELD_NAMES) and flat["lora_r"] == 16 and flat["eval_steps"] is None
    assert resolve_hyperparameters(flat) == hp


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(InvalidInput) as exc:
        resolve_hyperparameters({"lr": "1"})
    assert exc.value.field == "lr"
    assert str(exc.value).startswith("unknown hyperparameter 'lr': valid names are apply_lora, lora_r,")
    assert all(name in str(exc.value) for name in FIELD_NAMES)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("learning_rate", "abc", "learning_rate=abc: learning_rate must be a number"),
        ("learning_rate", "-1", "learning_rate=-1: learning_rate must be a positive number"),
        ("lora_r", "-1", "lora_r=-1: lora_r must be a positive integer"),
        ("lora_r", "x", "lora_r=x: lora_r must be an integer"),
        ("lora_dropout", "1.5", "lora_dropout must be a non-negative number below 1"),
        ("max_steps", "-3", "max_steps must be -1 or a positive integer"),
        ("lr_scheduler_type", "step", "lr_scheduler_type must be one of linear, cosine, cosine_with_restarts"),
        ("apply_lora", "maybe", "apply_lora must be true or false"),
        ("precision", "int8", "precision must be one of auto, fp32, bf16, fp16"),
    ],
)
def test_bad_values_name_the_field(name, value, message):
    with pytest.raises(InvalidInput) as exc:
        resolve_hyperparameters({name: value})
    assert exc.value.field == name
    assert message in str(exc.value)


def test_early_stopping_needs_evaluation():
    with pytest.raises(InvalidInput, match="apply_early_stopping needs evaluation_strategy") as exc:
        resolve_hyperparameters({"apply_early_stopping": True, "evaluation_strategy": "no"})
    assert exc.value.field == "apply_early_stopping"


def test_set_options_are_coerced():
    raw = parse_assignments(
        ["learning_rate=2e-4", "apply_lora=false", "lora_r =16", "eval_steps=none", "resume_from_checkpoint=true"],
        "--set", "learning_rate=2e-4",
    )
    assert raw["lora_r"] == "16"
    hp = resolve_hyperparameters(raw)
    assert hp.optimization.learning_rate == pytest.approx(2e-4)
    assert hp.lora.apply_lora is False and hp.lora.lora_r == 16 and hp.evaluation.eval_steps is None
    assert hp.checkpointing.resume_from_checkpoint is True
    path = resolve_hyperparameters({"resume_from_checkpoint": "/ck/checkpoint-5"}).checkpointing.resume_from_checkpoint
    assert path == "/ck/checkpoint-5"


def test_new_settings_have_defaults():
    hp = resolve_hyperparameters({})
    assert hp.lora.quantization == "none" and hp.data.packing and not hp.memory.gradient_checkpointing
    assert hp.checkpointing.save_steps is None


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        ({"quantization": "8bit"}, "quantization", "quantization must be one of none, 4bit"),
        ({"save_steps": "0"}, "save_steps", "save_steps must be a positive integer or none"),
        ({"quantization": "4bit", "apply_lora": "false"}, "quantization", "needs apply_lora=true"),
    ],
)
def test_method_settings_are_validated(raw, field, message):
    with pytest.raises(InvalidInput) as exc:
        resolve_hyperparameters(raw)
    assert exc.value.field == field and message in str(exc.value)


def test_qlora_needs_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(InvalidInput, match=r"quantization=4bit \(QLoRA\) needs a CUDA GPU.*valid values here: none") as exc:
        check_hardware(resolve_hyperparameters({"quantization": "4bit"}))
    assert exc.value.field == "quantization"
    with pytest.raises(InvalidInput, match="precision=fp16 needs a CUDA GPU") as exc:
        check_hardware(resolve_hyperparameters({"precision": "fp16"}))
    assert exc.value.field == "precision"
