"""MLflow model format for chat models: a real pyfunc around a Hugging Face checkpoint.

Layout of a saved model (what Azure's registry calls "MLflow format"):

    out_dir/MLmodel                 flavors.python_function.artifacts.model.path -> artifacts/model
    out_dir/artifacts/model/        merged full model + tokenizer + chat template (safetensors)
    out_dir/artifacts/adapter/      the LoRA adapter, when the job trained one
    out_dir/python_model.pkl        ChatModel, pickled by reference to this module

`mlflow.pyfunc.load_model(out_dir).predict([{"role": "user", "content": "hi"}])` answers a string
(the pyfunc class is forgeflow.registry.pyfunc.ChatModel). This module imports MLflow only to save,
so finding the checkpoint inside a model folder stays cheap.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from forgeflow.chat import DEFAULT_MAX_NEW_TOKENS
from forgeflow.errors import InvalidInput, NotFound

_REQUIREMENTS = ("mlflow-skinny", "torch", "transformers", "accelerate", "safetensors", "tokenizers", "pandas")


def save_chat_model(
    hf_dir: Path, out_dir: Path, *, adapter_dir: Path | None = None, metadata: dict | None = None
) -> Path:
    """Save a HF chat checkpoint folder as an MLflow pyfunc model in out_dir (which must not exist)."""
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if not (hf_dir / "config.json").is_file():
        raise NotFound(f"{hf_dir} is not a Hugging Face model folder (no config.json)")
    if out_dir.exists():
        raise InvalidInput(f"{out_dir} already exists; remove it or choose another output folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ff-stage-", dir=out_dir.parent) as tmp:
        # MLflow names each copied artifact after its source folder, so stage hard-linked trees named model/ and
        # adapter/ (MLflow refuses symlinks that point outside the staged folder).
        artifacts = {"model": _stage(hf_dir, Path(tmp) / "model")}
        if adapter_dir is not None:
            artifacts["adapter"] = _stage(Path(adapter_dir), Path(tmp) / "adapter")
        import mlflow.pyfunc

        from forgeflow.registry.pyfunc import ChatModel

        try:
            with warnings.catch_warnings():
                # Chat input is free-form, so an input example would only make MLflow run the model while saving.
                warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)
                mlflow.pyfunc.save_model(
                    path=str(out_dir),
                    python_model=ChatModel(),
                    artifacts=artifacts,
                    pip_requirements=_pip_requirements(),
                    signature=_signature(),
                    metadata={"task": "llm/v1/chat", "forgeflow_format": "chat", **(metadata or {})},
                )
        except BaseException:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise
    return out_dir


def _signature() -> Any:
    """A params-only signature, so predict(..., params={...}) reaches the model; inputs stay free-form."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec

    specs = [
        ParamSpec("max_new_tokens", "long", DEFAULT_MAX_NEW_TOKENS),
        ParamSpec("temperature", "double", 1.0),
        ParamSpec("top_p", "double", 1.0),
        ParamSpec("do_sample", "boolean", False),
    ]
    return ModelSignature(params=ParamSchema(specs))


def _stage(source: Path, link: Path) -> str:
    if not source.is_dir():
        raise NotFound(f"{source} does not exist or is not a folder")
    try:
        shutil.copytree(source, link, copy_function=os.link)
    except OSError:
        shutil.rmtree(link, ignore_errors=True)
        shutil.copytree(source, link)
    return str(link)


def _pip_requirements() -> list[str]:
    """Pinned to what is installed, so MLflow skips its slow requirement inference."""
    pins = []
    for name in _REQUIREMENTS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins
