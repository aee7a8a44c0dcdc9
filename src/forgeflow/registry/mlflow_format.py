"""MLflow model format for chat models: MLflow's own `transformers` flavor with the `llm/v1/chat` task.

Layout of a saved model (what Azure's registry calls "MLflow format"):

    out_dir/MLmodel                 flavors.transformers (model_binary: model) and python_function
                                    (loader_module: mlflow.transformers); signature: MLflow's chat schema
    out_dir/model/                  the weights (safetensors) and config, plus a copy of the tokenizer, so the
                                    folder is a complete Hugging Face checkpoint for forgeflow's runtimes
    out_dir/components/tokenizer/   the tokenizer and chat template, where MLflow loads them from
    out_dir/adapter/                the LoRA adapter, when the job trained one (MLflow ignores it)
    out_dir/requirements.txt        the packages the model needs, pinned to the versions that saved it

Nothing in it refers to forgeflow, so the folder travels: in any environment with MLflow and its
requirements.txt, `mlflow.pyfunc.load_model(out_dir).predict({"messages": [...]})` answers a chat completion
and `mlflow models serve --env-manager local -m out_dir` serves it. Generation then follows MLflow's and
transformers' text-generation pipeline (sampling unless the model's generation config says otherwise;
`temperature` must be above 0), not forgeflow's runtimes. Folders written by earlier forgeflow versions (a
pyfunc around `registry/pyfunc.py`) still load in forgeflow; `inference/model_folder.py` finds the
checkpoint in both layouts.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from forgeflow.errors import InvalidInput, NotFound

CHAT_TASK = "llm/v1/chat"
# What loading and serving the model needs beside Python; mlflow-skinny carries the scoring server (FastAPI)
_REQUIREMENTS = ("torch", "transformers", "tokenizers", "safetensors", "huggingface-hub", "numpy", "pandas", "jinja2")
_TOKENIZER_DIR = Path("components") / "tokenizer"


def save_chat_model(
    hf_dir: Path, out_dir: Path, *, adapter_dir: Path | None = None, metadata: dict | None = None
) -> Path:
    """Save a HF chat checkpoint folder as an MLflow transformers chat model in out_dir (which must not exist).

    Written into a hidden sibling folder and renamed into place, so out_dir is either whole or absent."""
    hf_dir, out_dir = Path(hf_dir).resolve(), Path(out_dir)
    if not (hf_dir / "config.json").is_file():
        raise NotFound(f"{hf_dir} is not a Hugging Face model folder (no config.json)")
    if out_dir.exists():
        raise InvalidInput(f"{out_dir} already exists; remove it or choose another output folder")
    if adapter_dir is not None and not Path(adapter_dir).is_dir():
        raise NotFound(f"{adapter_dir} does not exist or is not a folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    model, tokenizer = _load(hf_dir)
    # MLflow records this as the source model. An absolute path is never a hub repository id, so saving makes no
    # request for a model card or license; it names where the weights and tokenizer will lie, which is where
    # MLflow's `stop` handling reads the tokenizer from.
    model.name_or_path = str(out_dir.resolve() / "model")
    with tempfile.TemporaryDirectory(prefix=".ff-stage-", dir=out_dir.parent) as tmp:
        stage = Path(tmp) / "model"
        _save(model, tokenizer, stage, {"task": CHAT_TASK, "forgeflow_format": "transformers-chat", **(metadata or {})})
        # MLflow's placeholder for a license it could not fetch from the hub: a local path has none there
        (stage / "LICENSE.txt").unlink(missing_ok=True)
        for item in (stage / _TOKENIZER_DIR).iterdir():  # the checkpoint folder loads alone (hf_model_dir)
            _link_or_copy(item, stage / "model" / item.name)
        if adapter_dir is not None:
            shutil.copytree(adapter_dir, stage / "adapter", copy_function=_link_or_copy)
        os.replace(stage, out_dir)
    return out_dir


def _load(hf_dir: Path) -> tuple[Any, Any]:
    """The checkpoint in memory, in the dtype it was saved in (MLflow's flavor saves a pipeline's parts)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forgeflow.inference.runtimes.base import CHATML_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    if not tokenizer.chat_template:  # the template forgeflow's runtimes use for such a model, so both agree
        tokenizer.chat_template = CHATML_TEMPLATE
    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype="auto"), tokenizer


def _save(model: Any, tokenizer: Any, path: Path, metadata: dict) -> None:
    import mlflow.transformers

    # MLflow warns that it found no model card or license on the hub for a local path: expected, and noise here
    quiet = logging.getLogger("mlflow.transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        mlflow.transformers.save_model({"model": model, "tokenizer": tokenizer}, str(path), task=CHAT_TASK,
                                       pip_requirements=pip_requirements(), metadata=metadata)
    finally:
        quiet.setLevel(level)


def pip_requirements() -> list[str]:
    """MLflow and the packages above, pinned to the installed versions without local labels (`torch==2.13.0`,
    not `+cpu`), so pip picks the build that fits the machine that installs them."""
    from packaging.version import Version

    pins = []
    mlflow_dist = next((d for d in ("mlflow", "mlflow-skinny") if _installed(d)), "mlflow-skinny")
    for name in (mlflow_dist, *_REQUIREMENTS):
        version = _installed(name)
        if version:
            pins.append(f"{name}=={Version(version).public}")
    return pins


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    """A hard link where the file system allows one (same file, no copy), else a copy."""
    if Path(source).is_dir():
        shutil.copytree(source, target, copy_function=_link_or_copy)
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
