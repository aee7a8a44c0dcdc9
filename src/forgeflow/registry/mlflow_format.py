"""MLflow model format for chat models: a real pyfunc around a Hugging Face checkpoint.

Layout of a saved model (what Azure's registry calls "MLflow format"):

    out_dir/MLmodel                 flavors.python_function.artifacts.model.path -> artifacts/model
    out_dir/artifacts/model/        merged full model + tokenizer + chat template (safetensors)
    out_dir/artifacts/adapter/      the LoRA adapter, when the job trained one
    out_dir/python_model.pkl        ChatModel, pickled by reference to this module

`mlflow.pyfunc.load_model(out_dir).predict([{"role": "user", "content": "hi"}])` answers a string.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from forgeflow.errors import InvalidInput, NotFound

GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "do_sample", "repetition_penalty")
DEFAULT_MAX_NEW_TOKENS = 128
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


def hf_model_dir(mlflow_model_dir: Path) -> Path:
    """The HF checkpoint folder inside an MLflow model dir; a HF folder itself is returned unchanged."""
    import yaml

    path = Path(mlflow_model_dir)
    if (path / "config.json").is_file():
        return path
    mlmodel = path / "MLmodel"
    if not mlmodel.is_file():
        raise NotFound(f"{path} is neither an MLflow model (no MLmodel file) nor a Hugging Face model folder")
    spec = yaml.safe_load(mlmodel.read_text()) or {}
    artifacts = (spec.get("flavors", {}).get("python_function", {}) or {}).get("artifacts") or {}
    entry = artifacts.get("model")
    rel = entry.get("path") if isinstance(entry, dict) else entry
    candidate = path / rel if rel else path / "artifacts" / "model"
    if not (candidate / "config.json").is_file():
        raise NotFound(f"{path}: the MLflow model holds no Hugging Face checkpoint at {candidate}")
    return candidate


class ChatModel(mlflow.pyfunc.PythonModel):
    """Chat completion over a HF causal LM: messages in, assistant text out."""

    # Chat input is free-form (list, dict or DataFrame); MLflow's type-hint validation would reject it.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir = context.artifacts["model"]
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        dtype = "auto" if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(self.device).eval()

    def predict(self, context, model_input, params=None):  # untyped: MLflow turns type hints into a schema
        conversations, single, request_params = _conversations(model_input)
        answers = [self.chat(messages, {**request_params, **(params or {})}) for messages in conversations]
        return answers[0] if single else answers

    def chat(self, messages: list[dict], params: dict | None = None) -> str:
        """Generate the assistant's next message for one conversation."""
        import torch

        kwargs = _generation_kwargs(params or {})
        encoded = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        encoded = {k: v.to(self.device) for k, v in encoded.items()}
        with torch.inference_mode():
            output = self.model.generate(**encoded, pad_token_id=self.tokenizer.pad_token_id, **kwargs)
        new_tokens = output[0, encoded["input_ids"].shape[1] :]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


def _conversations(model_input: Any) -> tuple[list[list[dict]], bool, dict]:
    """Normalise the accepted input shapes into (conversations, single?, params)."""
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):
        rows = model_input.to_dict(orient="records")
        if "messages" not in model_input.columns:
            raise InvalidInput("a DataFrame input needs a 'messages' column", field="messages")
        return [_messages(row["messages"]) for row in rows], False, {}
    if isinstance(model_input, dict):
        body = model_input.get("input_data", model_input)
        messages = body.get("messages", body.get("input_string"))
        params = body.get("params") or body.get("parameters") or {}
        if messages is None:
            raise InvalidInput("input needs 'messages' (a list of {role, content})", field="messages")
        return [_messages(messages)], True, dict(params)
    if isinstance(model_input, list) and model_input and all(isinstance(m, dict) for m in model_input):
        if all("role" in m for m in model_input):
            return [_messages(model_input)], True, {}
        return [_messages(m.get("messages")) for m in model_input], False, {}
    if isinstance(model_input, list) and model_input and all(isinstance(m, list) for m in model_input):
        return [_messages(m) for m in model_input], False, {}
    raise InvalidInput("input must be a list of chat messages or {'messages': [...], 'params': {...}}", field="messages")


def _messages(value: Any) -> list[dict]:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise InvalidInput("messages must be a non-empty list of {role, content}", field="messages")
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidInput("each message needs a 'role' and a 'content' string", field="messages")
    return [{"role": m["role"], "content": str(m.get("content") or "")} for m in value]


def _generation_kwargs(params: dict) -> dict:
    kwargs = {k: params[k] for k in GENERATION_KEYS if params.get(k) is not None}
    kwargs["max_new_tokens"] = int(kwargs.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
    kwargs["do_sample"] = bool(kwargs.get("do_sample", False))
    if not kwargs["do_sample"]:
        for key in ("temperature", "top_p", "top_k"):
            kwargs.pop(key, None)
    return kwargs


def _signature() -> Any:
    """A params-only signature, so predict(..., params={...}) reaches the model; inputs stay free-form."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec

    specs = [
        ParamSpec("max_new_tokens", "long", DEFAULT_MAX_NEW_TOKENS),
        ParamSpec("temperature", "double", 1.0),
        ParamSpec("top_p", "double", 1.0),
        ParamSpec("top_k", "long", 50),
        ParamSpec("do_sample", "boolean", False),
        ParamSpec("repetition_penalty", "double", 1.0),
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
