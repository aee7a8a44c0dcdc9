"""Model folders the registry's tests share: weights that make greedy answers vary, and the MLflow layout
earlier forgeflow versions wrote."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tiny import vary_weights


@pytest.fixture(scope="session")
def varied_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with larger random weights, so greedy answers vary with the prompt."""
    out = tmp_path_factory.mktemp("varied-model")
    shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True)
    return vary_weights(out, seed=1)


@pytest.fixture(scope="session")
def legacy_model():
    """Write `hf_dir` to `out` as forgeflow did before it used MLflow's transformers flavor: a pyfunc whose pickle
    names forgeflow.registry.pyfunc.ChatModel, the checkpoint under artifacts/model."""

    def write(hf_dir: Path, out: Path) -> Path:
        import mlflow.pyfunc

        from forgeflow.registry.pyfunc import ChatModel

        stage = out.parent / f".{out.name}-stage" / "model"
        shutil.copytree(hf_dir, stage)
        mlflow.pyfunc.save_model(path=str(out), python_model=ChatModel(), artifacts={"model": str(stage)},
                                 pip_requirements=["mlflow-skinny"], metadata={"task": "llm/v1/chat"})
        shutil.rmtree(stage.parent)
        return out

    return write
