from __future__ import annotations

import pytest

from forgeflow.errors import InvalidInput
from forgeflow.training.hyperparams import (
    FIELD_NAMES,
    Hyperparameters,
    describe,
    parse_set_options,
    resolve_hyperparameters,
)


def test_defaults_suit_a_cpu_lora_run():
    hp = resolve_hyperparameters({})
    assert hp.apply_lora and hp.lora_r == 8 and hp.lora_alpha == 16
    assert hp.learning_rate == 2e-4 and hp.lr_scheduler_type == "linear" and hp.max_steps == -1
    assert hp.precision == "auto" and hp.evaluation_strategy == "epoch" and hp.resume_from_checkpoint is None


def test_every_field_has_a_description():
    assert set(describe()) == set(FIELD_NAMES) == set(Hyperparameters.model_fields)
    assert all(describe().values())


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
    raw = parse_set_options(
        ["learning_rate=2e-4", "apply_lora=false", "lora_r = 16", "eval_steps=none", "resume_from_checkpoint=true"]
    )
    assert raw["lora_r"] == "16"
    hp = resolve_hyperparameters(raw)
    assert hp.learning_rate == pytest.approx(2e-4)
    assert hp.apply_lora is False and hp.lora_r == 16 and hp.eval_steps is None
    assert hp.resume_from_checkpoint is True
    assert resolve_hyperparameters(parse_set_options(["resume_from_checkpoint=/ck/checkpoint-5"])).resume_from_checkpoint == (
        "/ck/checkpoint-5"
    )


def test_set_option_without_equals_is_rejected():
    with pytest.raises(InvalidInput, match="expected name=value"):
        parse_set_options(["learning_rate"])


def test_new_settings_have_defaults():
    hp = resolve_hyperparameters({})
    assert hp.quantization == "none" and hp.packing and not hp.gradient_checkpointing and hp.save_steps is None
    assert resolve_hyperparameters({"save_steps": "25"}).save_steps == 25


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
        resolve_hyperparameters({"quantization": "4bit"})
    assert exc.value.field == "quantization"
    with pytest.raises(InvalidInput, match="precision=fp16 needs a CUDA GPU") as exc:
        resolve_hyperparameters({"precision": "fp16"})
    assert exc.value.field == "precision"
