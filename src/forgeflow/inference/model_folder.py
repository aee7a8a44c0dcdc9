"""Where the weights of a model folder are: a plain Hugging Face checkpoint folder, or the checkpoint inside an
MLflow model folder (`MLmodel` -> `flavors.python_function.artifacts.model.path`, see registry/mlflow_format.py).
Every runtime reads a model through this, so a registered model and a bare checkpoint load the same way."""

from __future__ import annotations

from pathlib import Path

from forgeflow.errors import InvalidInput, NotFound
from forgeflow.yamlfile import load_yaml


def hf_model_dir(mlflow_model_dir: Path) -> Path:
    """The HF checkpoint folder inside an MLflow model dir; a HF folder itself is returned unchanged."""
    path = Path(mlflow_model_dir)
    if (path / "config.json").is_file():
        return path
    mlmodel = path / "MLmodel"
    if not mlmodel.is_file():
        raise NotFound(f"{path} is neither an MLflow model (no MLmodel file) nor a Hugging Face model folder")
    spec = load_yaml(mlmodel.read_text(), str(mlmodel)) or {}
    if not isinstance(spec, dict):
        raise InvalidInput(f"{mlmodel}: expected a mapping (flavors, ...)")
    artifacts = (spec.get("flavors", {}).get("python_function", {}) or {}).get("artifacts") or {}
    entry = artifacts.get("model")
    rel = entry.get("path") if isinstance(entry, dict) else entry
    candidate = path / rel if rel else path / "artifacts" / "model"
    if not (candidate / "config.json").is_file():
        raise NotFound(f"{path}: the MLflow model holds no Hugging Face checkpoint at {candidate}")
    return candidate
