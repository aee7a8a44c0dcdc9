from __future__ import annotations

import shutil

import pytest

from forgeflow.errors import InvalidInput, NotFound
from forgeflow.inference.model_folder import hf_model_dir
from forgeflow.registry.mlflow_format import save_chat_model

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def saved_model(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-model")
    adapter = root / "adapter-src"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    return save_chat_model(tiny_model_dir, root / "model", adapter_dir=adapter, metadata={"base_model": "tiny"})


def test_layout_and_hf_model_dir(saved_model, tiny_model_dir):
    import yaml

    assert (saved_model / "MLmodel").is_file()
    assert hf_model_dir(saved_model) == saved_model / "artifacts" / "model"
    assert (saved_model / "artifacts" / "model" / "model.safetensors").is_file()
    assert (saved_model / "artifacts" / "adapter" / "adapter_config.json").is_file()
    assert hf_model_dir(tiny_model_dir) == tiny_model_dir
    spec = yaml.safe_load((saved_model / "MLmodel").read_text())
    assert spec["metadata"]["base_model"] == "tiny" and spec["metadata"]["task"] == "llm/v1/chat"
    assert any(line.startswith("transformers==") for line in (saved_model / "requirements.txt").read_text().split())
    assert not list(saved_model.parent.glob(".ff-stage-*"))


def test_pyfunc_predict_answers_text(saved_model):
    import mlflow.pyfunc
    import pandas as pd

    model = mlflow.pyfunc.load_model(str(saved_model))
    assert isinstance(model.predict(HI, params={"max_new_tokens": 4}), str)
    assert isinstance(model.predict({"messages": HI, "params": {"max_new_tokens": 3, "do_sample": True}}), str)
    answers = model.predict(pd.DataFrame({"messages": [HI, HI]}), params={"max_new_tokens": 2})
    assert isinstance(answers, list) and len(answers) == 2 and all(isinstance(a, str) for a in answers)
    with pytest.raises(InvalidInput, match="messages"):
        model.predict({"prompt": "hi"})


def test_errors(tmp_path, tiny_model_dir, saved_model):
    with pytest.raises(NotFound, match="no config.json"):
        save_chat_model(tmp_path, tmp_path / "out")
    with pytest.raises(InvalidInput, match="already exists"):
        save_chat_model(tiny_model_dir, saved_model)
    with pytest.raises(NotFound, match="neither an MLflow model"):
        hf_model_dir(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(saved_model, broken, ignore=shutil.ignore_patterns("model.safetensors", "config.json"))
    with pytest.raises(NotFound, match="holds no Hugging Face checkpoint"):
        hf_model_dir(broken)
