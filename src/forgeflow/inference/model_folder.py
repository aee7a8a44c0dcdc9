"""Where the weights of a model folder are: a plain Hugging Face checkpoint folder, or the checkpoint inside an
MLflow model folder. Two MLflow layouts are read (see registry/mlflow_format.py): MLflow's `transformers` flavor
(`MLmodel` -> `flavors.transformers.model_binary`, the layout forgeflow writes) and the pyfunc earlier forgeflow
versions wrote (`flavors.python_function.artifacts.model.path`). Every runtime reads a model through this, so a
registered model and a bare checkpoint load the same way."""

from __future__ import annotations

from pathlib import Path

from forgeflow.errors import InvalidInput, NotFound
from forgeflow.yamlfile import load_yaml

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def hf_model_dir(mlflow_model_dir: Path) -> Path:
    """The HF checkpoint folder inside an MLflow model dir; a HF folder itself is returned unchanged."""
    path = Path(mlflow_model_dir)
    if (path / "config.json").is_file():
        return path
    flavors = mlmodel_flavors(path)
    if flavors is None:
        raise NotFound(f"{path} is neither an MLflow model (no MLmodel file) nor a Hugging Face model folder")
    if isinstance(flavors.get("transformers"), dict):
        candidate = path / str(flavors["transformers"].get("model_binary") or "model")
        if (candidate / "config.json").is_file() and not any((candidate / f).is_file() for f in TOKENIZER_FILES):
            raise InvalidInput(f"{path}: this MLflow transformers model keeps its tokenizer apart from its weights "
                               f"and forgeflow reads one folder holding both: copy the files of "
                               f"{path / 'components' / 'tokenizer'} into {candidate} and try again", field="model")
    else:
        artifacts = (flavors.get("python_function") or {}).get("artifacts") or {}
        entry = artifacts.get("model")
        rel = entry.get("path") if isinstance(entry, dict) else entry
        candidate = path / rel if rel else path / "artifacts" / "model"
    if not candidate.resolve().is_relative_to(path.resolve()):
        raise InvalidInput(f"{path / 'MLmodel'}: the checkpoint must lie inside the model folder, not at {candidate}",
                           field="model")
    if not (candidate / "config.json").is_file():
        raise NotFound(f"{path}: the MLflow model holds no Hugging Face checkpoint at {candidate}")
    return candidate


def mlmodel_flavors(path: Path) -> dict | None:
    """The `flavors` of the MLmodel file in `path`, or None when there is no MLmodel file."""
    mlmodel = Path(path) / "MLmodel"
    if not mlmodel.is_file():
        return None
    spec = load_yaml(mlmodel.read_text(), str(mlmodel)) or {}
    if not isinstance(spec, dict) or not isinstance(spec.get("flavors") or {}, dict):
        raise InvalidInput(f"{mlmodel}: expected a mapping (flavors, ...)")
    return spec.get("flavors") or {}
