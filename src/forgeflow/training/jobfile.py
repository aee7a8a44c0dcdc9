"""The fine-tuning job request: one model for the REST body and the YAML job file.

The YAML file has the shape `az ml job create -f` users know:

    type: finetuning
    name: quill-ft
    model: smollm2-135m-instruct            # or {type: mlflow_model, path: ./folder}
    training_data: ./train_data.jsonl       # or {type: uri_file, path: ./train_data.jsonl}
    validation_data: ./test_data.jsonl
    compute: local                          # azureml:local works too
    hyperparameters: {learning_rate: 2e-4, num_train_epochs: 1}

Relative paths are relative to the file. Unknown keys at any level are errors that name them and
list what is valid; hyperparameters are checked by `resolve_hyperparameters`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
from pydantic import Field
from pydantic_core import PydanticCustomError

from forgeflow.errors import ForgeflowError, InvalidInput
from forgeflow.yamlfile import load_yaml

# Keys of Azure's finetuning job schema that forgeflow reads besides JobRequest's own fields.
FILE_ONLY_KEYS = ("$schema", "task", "display_name")
ASSET_KEYS = ("type", "path")
TASKS = ("chat_completion",)


class JobRequest(pydantic.BaseModel):
    """A chat-completion fine-tuning job (the body of POST /api/jobs)."""

    type: str = Field("finetuning", description="Job type; only 'finetuning' exists.")
    model: str = Field(description="Base model: catalog name, local folder or registered name:version.")
    training_data: str = Field(description="Path of the training chat JSONL file.")
    validation_data: str | None = Field(None, description="Path of the validation chat JSONL file.")
    hyperparameters: dict[str, Any] = Field(default_factory=dict, description="Azure-named settings.")
    name: str | None = Field(None, description="Display name.")
    compute: str = Field("local", description="Compute target (see: forgeflow compute list).")

    @pydantic.model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [k for k in data if k not in cls.model_fields]
            if unknown:
                raise PydanticCustomError(
                    "unknown_field", "unknown field {name}: valid fields are {valid}",
                    {"name": repr(unknown[0]), "valid": ", ".join(cls.model_fields)},
                )
        return data


def load_job_file(path: Path) -> dict[str, Any]:
    """Read a YAML job file into a JobRequest-shaped dict (paths made absolute); errors name the file and key."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InvalidInput(f"job file {path} does not exist", field="file")
    doc = load_yaml(path.read_text(encoding="utf-8"), str(path), field="file")
    if not isinstance(doc, dict):
        raise InvalidInput(f"{path}: expected a mapping of job fields (type, model, training_data, ...)", field="file")
    try:
        return normalize_job_doc(doc, base_dir=path.resolve().parent)
    except ForgeflowError as exc:
        raise InvalidInput(f"{path}: {exc.message}", field=exc.field) from None


def normalize_job_doc(doc: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Azure-shaped job document -> JobRequest fields."""
    valid = list(JobRequest.model_fields) + list(FILE_ONLY_KEYS)
    unknown = [k for k in doc if k not in valid]
    if unknown:
        raise InvalidInput(f"unknown key {unknown[0]!r}: valid keys are {', '.join(valid)}", field=str(unknown[0]))
    task = doc.get("task")
    if task is not None and task not in TASKS:
        raise InvalidInput(f"task {task!r} is not supported: use {', '.join(TASKS)}", field="task")
    out: dict[str, Any] = {}
    if "type" in doc:
        out["type"] = str(doc["type"])
    name = doc.get("name") or doc.get("display_name")
    if name is not None:
        out["name"] = str(name)
    if doc.get("compute") is not None:
        out["compute"] = str(doc["compute"]).removeprefix("azureml:")
    if doc.get("model") is not None:
        out["model"] = _model_ref(_asset_path(doc["model"], "model"), base_dir)
    for key in ("training_data", "validation_data"):
        if doc.get(key) is not None:
            out[key] = str(_local(_asset_path(doc[key], key), base_dir))
    hp = doc.get("hyperparameters")
    if hp is not None:
        if not isinstance(hp, dict):
            raise InvalidInput("hyperparameters must be a mapping of name: value", field="hyperparameters")
        from forgeflow.training.hyperparams import resolve_hyperparameters

        resolve_hyperparameters(hp)  # fail here, naming the file, rather than on the server
        out["hyperparameters"] = {str(k): v for k, v in hp.items()}
    return out


def _asset_path(value: Any, key: str) -> str:
    """A plain string, or Azure's `{type: ..., path: ...}` asset form."""
    if isinstance(value, dict):
        unknown = [k for k in value if k not in ASSET_KEYS]
        if unknown:
            raise InvalidInput(f"{key}: unknown key {unknown[0]!r}: valid keys are {', '.join(ASSET_KEYS)}", field=key)
        if not value.get("path"):
            raise InvalidInput(f"{key}: needs a path", field=key)
        value = value["path"]
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise InvalidInput(f"{key} must be a path or {{type, path}}", field=key)
    return str(value).strip()


def _local(value: str, base_dir: Path) -> Path:
    if value.startswith("azureml://"):
        raise InvalidInput(f"{value} is an Azure ML asset URI; forgeflow reads local files: give a path", field="path")
    p = Path(value).expanduser()
    return (p if p.is_absolute() else base_dir / p).resolve()


def _model_ref(value: str, base_dir: Path) -> str:
    """A relative folder next to the file becomes absolute; catalog names and name:version stay as they are."""
    if value.startswith("azureml://"):
        raise InvalidInput(f"model {value} is an Azure ML registry URI: use a catalog name (forgeflow model list), "
                           "a local folder or a registered NAME:VERSION", field="model")
    local = _local(value, base_dir)
    return str(local) if local.is_dir() else value


def merge_job(file_fields: dict[str, Any], flags: dict[str, Any], set_values: dict[str, Any]) -> dict[str, Any]:
    """File fields, overridden by CLI flags that were given, hyperparameters by `--set`."""
    body = dict(file_fields)
    body.update({k: v for k, v in flags.items() if v is not None})
    body["hyperparameters"] = dict(file_fields.get("hyperparameters") or {}) | dict(set_values)
    for key, flag in (("model", "--model"), ("training_data", "--training-data")):
        if not body.get(key):
            raise InvalidInput(f"missing {key}: give {flag} or '{key}:' in the job file (-f)", field=key)
    return body
