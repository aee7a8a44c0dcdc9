"""The YAML job file (`job create -f`): Azure's shape, relative paths, CLI overrides, unknown keys named, and
hyperparameter errors said of the file or the `--set` option that gave the value."""

from __future__ import annotations

import pytest

from forgeflow.errors import InvalidInput
from forgeflow.training.jobfile import job_body, load_job_file


def write(tmp_path, text: str):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_azure_shaped_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "base").mkdir()
    path = write(tmp_path, """
$schema: https://azuremlschemas.azureedge.net/latest/finetuningJob.schema.json
type: finetuning
task: chat_completion
display_name: quill-ft
model: {type: mlflow_model, path: ./base}
training_data: {type: uri_file, path: data/train.jsonl}
validation_data: data/test.jsonl
compute: azureml:local
hyperparameters:
  learning_rate: "0.0002"
  num_train_epochs: "1"
""")
    fields = load_job_file(path)
    assert fields == {
        "type": "finetuning", "name": "quill-ft", "compute": "local", "model": str(tmp_path / "base"),
        "training_data": str(tmp_path / "data" / "train.jsonl"), "validation_data": str(tmp_path / "data" / "test.jsonl"),
        "hyperparameters": {"learning_rate": "0.0002", "num_train_epochs": "1"},
    }


def test_catalog_names_and_registered_refs_stay(tmp_path):
    assert load_job_file(write(tmp_path, "model: quill:2\ntraining_data: t.jsonl\n"))["model"] == "quill:2"
    assert load_job_file(write(tmp_path, "model: smollm2-135m-instruct\n"))["model"] == "smollm2-135m-instruct"


def test_flags_and_set_override_the_file(tmp_path):
    path = write(tmp_path, "model: a\ntraining_data: /t.jsonl\nname: x\n"
                           "hyperparameters: {learning_rate: 1e-3, lora_r: 4}\n")
    body = job_body(path, {"model": "b", "name": None, "compute": None}, {"learning_rate": " 5e-4"})
    assert body["model"] == "b" and body["name"] == "x" and "compute" not in body
    hp = body["hyperparameters"]  # validated once, sent with every setting filled in
    assert hp["learning_rate"] == 5e-4 and hp["lora_r"] == 4 and hp["lora_alpha"] == 16
    with pytest.raises(InvalidInput, match="missing training_data: give --training-data"):
        job_body(None, {"model": "a"}, {})


@pytest.mark.parametrize("sets, message", [
    ({"lora_r": "-1"}, "--set lora_r=-1: lora_r must be a positive integer"),
    ({"lr": "1"}, "--set lr=1: unknown hyperparameter 'lr': valid names are apply_lora"),
    ({"apply_early_stopping": "true", "evaluation_strategy": "no"},
     "--set apply_early_stopping=true: apply_early_stopping needs evaluation_strategy"),
])
def test_set_errors_name_the_option(sets, message):
    with pytest.raises(InvalidInput) as info:
        job_body(None, {"model": "a", "training_data": "/t.jsonl"}, sets)
    assert info.value.message.startswith(message)


@pytest.mark.parametrize("text, message", [
    ("model: a\nepochs: 3\n", "unknown key 'epochs': valid keys are type, model, training_data"),
    ("model: a\ntraining_data: t\nhyperparameters: {lr: 0.1}\n", "unknown hyperparameter 'lr': valid names are"),
    ("model: a\ntraining_data: t\nhyperparameters: {lora_r: -1}\n", "lora_r=-1: lora_r must be a positive"),
    ("model: a\nhyperparameters: [1, 2]\n", "hyperparameters must be a mapping"),
    ("training_data: {type: uri_file, path: t.jsonl, mode: ro}\n", "training_data: unknown key 'mode': valid keys are type, path"),
    ("task: text_classification\n", "task 'text_classification' is not supported"),
    ("model: azureml://registries/azureml/models/Phi-3/versions/1\n", "Azure ML registry URI"),
    ("- a\n- b\n", "expected a mapping"),
    ("model: [unclosed\n", "not valid YAML"),
])
def test_bad_files_name_the_problem(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(InvalidInput) as info:
        job_body(path, {}, {})
    assert info.value.message.startswith(f"{path}: ") and message in info.value.message


def test_missing_file(tmp_path):
    with pytest.raises(InvalidInput, match="does not exist"):
        load_job_file(tmp_path / "nope.yaml")
