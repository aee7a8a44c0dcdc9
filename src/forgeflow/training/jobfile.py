"""The fine-tuning job request: one model for the REST body and the YAML job file.

The YAML file has the shape `az ml job create -f` users know:

    type: finetuning
    name: quill-ft
    model: smollm2-135m-instruct            # or {type: mlflow_model, path: ./folder}
    training_data: ./train_data.jsonl       # or {type: uri_file, path: ./train_data.jsonl}
    validation_data: ./test_data.jsonl
    compute: local                          # azureml:local works too
    hyperparameters: {learning_rate: 2e-4, num_train_epochs: 1}
    method: dpo                             # optional: sft (default) or dpo, also {type: dpo} or
                                            # {type: dpo, dpo: {hyperparameters: {beta: 0.1}}} as OpenAI's API has it

Relative paths are relative to the file. Unknown keys at any level are errors that name them and
list what is valid. The REST body takes the method as a hyperparameter (`hyperparameters: {method: dpo}`),
where the file's top-level `method` goes. `job_body` merges the file with the command line's flags,
`--method` and `--set` values and validates the hyperparameters once, an error naming the file or the option.
`check_method` holds what a method cannot honour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
from pydantic import Field
from pydantic_core import PydanticCustomError

from forgeflow.errors import ForgeflowError, InvalidInput
from forgeflow.training.hyperparams import Hyperparameters, resolve_hyperparameters
from forgeflow.yamlfile import load_yaml

# Keys of Azure's finetuning job schema that forgeflow reads besides JobRequest's own fields.
FILE_ONLY_KEYS = ("$schema", "task", "display_name", "method")
ASSET_KEYS = ("type", "path")
TASKS = ("chat_completion",)
METHOD_KEYS = ("type", "sft", "dpo")
DPO_BETA = 0.1  # TRL's default beta, what a dpo job trains with when none is given


class JobRequest(pydantic.BaseModel):
    """A chat-completion fine-tuning job, supervised or on preferences (the body of POST /api/jobs)."""

    type: str = Field("finetuning", description="Job type; only 'finetuning' exists.")
    model: str = Field(description="Base model: catalog name, local folder or registered name:version.")
    training_data: str = Field(description="Path of the training file: chat rows, or preference rows for method dpo.")
    validation_data: str | None = Field(None, description="Path of the validation file, the training file's shape.")
    hyperparameters: dict[str, Any] = Field(default_factory=dict, description="Azure-named settings; `method` "
                                            "(sft or dpo) picks the training method.")
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
        out["hyperparameters"] = {str(k): v for k, v in hp.items()}
    if doc.get("method") is not None:
        out["hyperparameters"] = _method_settings(doc["method"], out.get("hyperparameters") or {})
    return out


def _method_settings(method: Any, hp: dict[str, Any]) -> dict[str, Any]:
    """The file's top-level `method` (a name, or OpenAI's `{type, <type>: {hyperparameters}}`) folded into its
    hyperparameters; a method the hyperparameters name differently is an error."""
    extra: dict[str, Any] = {}
    if isinstance(method, dict):
        unknown = [k for k in method if k not in METHOD_KEYS]
        if unknown:
            raise InvalidInput(f"method: unknown key {unknown[0]!r}: valid keys are {', '.join(METHOD_KEYS)}",
                               field="method")
        name = method.get("type")
        inner = method.get(str(name), {}) if name is not None else {}
        other = [k for k in method if k not in ("type", name)]
        if other:
            raise InvalidInput(f"method: {other[0]!r} does not match type {name!r}", field="method")
        if not isinstance(inner, dict) or [k for k in inner if k != "hyperparameters"] or not isinstance(
            inner.get("hyperparameters", {}), dict
        ):
            raise InvalidInput(f"method: {name} must be {{hyperparameters: {{name: value}}}}", field="method")
        extra = {str(k): v for k, v in inner.get("hyperparameters", {}).items()}
        method = name
    if not isinstance(method, str) or not method.strip():
        raise InvalidInput("method must be sft or dpo, or {type: dpo}", field="method")
    method = method.strip()
    if "method" in hp and str(hp["method"]).strip() != method:
        raise InvalidInput(f"method {method} and hyperparameters.method {hp['method']} disagree: give one",
                           field="method")
    clash = [k for k in extra if k in hp and hp[k] != extra[k]]
    if clash:
        raise InvalidInput(f"{clash[0]} is given under method and under hyperparameters with different values: "
                           "give one", field=clash[0])
    return hp | extra | {"method": method}


def check_method(hp: Hyperparameters) -> Hyperparameters:
    """The settings a job of hp's method trains with; a setting the method cannot honour is refused by name.
    DPO never packs (each prompt is scored with its chosen and its rejected answer as a pair), so a dpo job's
    packing is false unless packing=true was asked for, which is an error; its beta is DPO_BETA when not given.
    DPO trains on one worker: data-parallel training (instance_count > 1, Ray Train) is supervised only."""
    if hp.method.method != "dpo":
        return hp
    count = hp.scaling.instance_count
    if count > 1:
        raise InvalidInput(f"instance_count={count}: DPO trains on one worker; data-parallel training on a ray "
                           "target is for supervised fine-tuning (method sft). Leave instance_count out or set "
                           "instance_count=1 (a ray target still runs the job on one of its nodes)",
                           field="instance_count")
    if hp.data.packing and "packing" in hp.data.model_fields_set:
        raise InvalidInput("packing=true: DPO never packs rows (each prompt is scored with its chosen and its "
                           "rejected answer as one pair): leave packing out or set packing=false", field="packing")
    if hp.evaluation.evaluate_against_base:
        raise InvalidInput("evaluate_against_base=true: that evaluation reads chat rows with reference answers, and "
                           "a dpo job's validation data is preference rows; evaluate the finished model with "
                           "forgeflow model evaluate --data CHAT_ROWS instead", field="evaluate_against_base")
    method = hp.method.model_copy(update={"beta": hp.method.beta or DPO_BETA})
    return hp.model_copy(update={"data": hp.data.model_copy(update={"packing": False}), "method": method})


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


def job_body(
    file: Path | None, flags: dict[str, Any], sets: dict[str, str], method: str | None = None
) -> dict[str, Any]:
    """The REST body of `job create`: the job file's fields, overridden by the flags given, its hyperparameters by
    `--method` and `--set`. The hyperparameters are validated here, once, and sent as the validated values."""
    fields = load_job_file(file) if file else {}
    body = fields | {k: v for k, v in flags.items() if v is not None}
    for key, flag in (("model", "--model"), ("training_data", "--training-data")):
        if not body.get(key):
            raise InvalidInput(f"missing {key}: give {flag} or '{key}:' in the job file (-f)", field=key)
    sets = {name: value.strip() for name, value in sets.items()}
    if method is not None:
        method = method.strip()
        if "method" in sets and sets["method"] != method:
            raise InvalidInput(f"--method {method} and --set method={sets['method']} disagree: give one",
                               field="method")
        sets["method"] = method
    try:
        hp = check_method(resolve_hyperparameters(dict(fields.get("hyperparameters") or {}) | sets))
    except InvalidInput as exc:
        raise _named_source(exc, file, sets, method) from None
    return body | {"hyperparameters": hp.to_dict()}


def _named_source(exc: InvalidInput, file: Path | None, sets: dict[str, str], method: str | None) -> InvalidInput:
    """The error of a hyperparameter, said of the option (`--method`, `--set`) or the file that gave it."""
    if exc.field == "method" and method is not None:
        return InvalidInput(f"--method {method}: {exc.message.removeprefix(f'method={method}: ')}", field="method")
    if exc.field in sets:
        given = f"{exc.field}={sets[exc.field]}"
        message = exc.message if exc.message.startswith(f"{given}: ") else f"{given}: {exc.message}"
        return InvalidInput(f"--set {message}", field=exc.field)
    if file is not None:
        return InvalidInput(f"{Path(file).expanduser()}: {exc.message}", field=exc.field)
    return exc
