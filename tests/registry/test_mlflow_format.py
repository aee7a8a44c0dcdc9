"""The MLflow format forgeflow saves chat models in (MLflow's transformers flavor, task llm/v1/chat), and the
pyfunc layout earlier versions wrote, which forgeflow still reads."""

from __future__ import annotations

import shutil
import socket

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

    spec = yaml.safe_load((saved_model / "MLmodel").read_text())
    assert spec["flavors"]["python_function"]["loader_module"] == "mlflow.transformers"
    assert spec["flavors"]["transformers"]["inference_task"] == "llm/v1/chat"
    assert spec["metadata"]["base_model"] == "tiny" and spec["metadata"]["task"] == "llm/v1/chat"
    assert hf_model_dir(saved_model) == saved_model / "model"
    assert hf_model_dir(tiny_model_dir) == tiny_model_dir
    for name in ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"):
        assert (saved_model / "model" / name).is_file(), name  # one folder a runtime loads alone
    assert (saved_model / "components" / "tokenizer" / "tokenizer.json").is_file()
    assert (saved_model / "adapter" / "adapter_config.json").is_file()
    assert not (saved_model / "LICENSE.txt").exists() and not (saved_model / "python_model.pkl").exists()
    assert not list(saved_model.parent.glob(".ff-stage-*"))
    pins = dict(line.split("==") for line in (saved_model / "requirements.txt").read_text().split())
    assert {"mlflow-skinny", "torch", "transformers", "tokenizers", "pandas", "jinja2"} <= set(pins)
    assert not any("+" in version for version in pins.values())  # torch==2.13.0, never a local build's +cpu
    assert "forgeflow" not in (saved_model / "MLmodel").read_text().replace("forgeflow_format", "")


def test_signature_is_the_chat_schema(saved_model):
    from mlflow.models import Model, ModelSignature
    from mlflow.types.llm import CHAT_MODEL_INPUT_SCHEMA, CHAT_MODEL_OUTPUT_SCHEMA

    signature = Model.load(str(saved_model)).signature
    assert signature == ModelSignature(inputs=CHAT_MODEL_INPUT_SCHEMA, outputs=CHAT_MODEL_OUTPUT_SCHEMA)


def test_predict_answers_chat_completions(saved_model, tiny_model_dir):
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.types.llm import ChatCompletionResponse
    from transformers import AutoTokenizer

    model = mlflow.pyfunc.load_model(str(saved_model))
    [answer] = model.predict({"messages": HI, "max_tokens": 4, "temperature": 0.5})
    parsed = ChatCompletionResponse.from_dict(answer)  # raises unless the output is chat-shaped
    assert parsed.object == "chat.completion" and parsed.choices[0].message.role == "assistant"
    assert isinstance(parsed.choices[0].message.content, str) and parsed.usage.completion_tokens <= 4
    prompt = AutoTokenizer.from_pretrained(tiny_model_dir).apply_chat_template(HI, add_generation_prompt=True,
                                                                                return_dict=True)["input_ids"]
    assert parsed.usage.prompt_tokens == len(prompt)  # the model's own chat template travelled with it
    chats = [HI, HI + [{"role": "assistant", "content": "a"}] + HI]
    two = model.predict(pd.DataFrame({"messages": chats, "max_tokens": [2, 2]}))
    assert len(two) == 2 and all(0 < ChatCompletionResponse.from_dict(a).usage.completion_tokens <= 2 for a in two)


def test_saving_makes_no_network_request(tiny_model_dir, tmp_path, monkeypatch):
    def refuse(sock, address):
        raise AssertionError(f"saving a model connected to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    save_chat_model(tiny_model_dir, tmp_path / "offline")
    assert (tmp_path / "offline" / "MLmodel").is_file()


def test_a_tokenizer_without_template_gets_the_runtimes_chatml(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from forgeflow.inference.runtimes.base import CHATML_TEMPLATE

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare, ignore=shutil.ignore_patterns("chat_template.jinja"))
    assert not AutoTokenizer.from_pretrained(bare).chat_template
    saved = save_chat_model(bare, tmp_path / "saved")
    assert AutoTokenizer.from_pretrained(saved / "components" / "tokenizer").chat_template == CHATML_TEMPLATE
    assert AutoTokenizer.from_pretrained(hf_model_dir(saved)).chat_template == CHATML_TEMPLATE


def test_the_layout_earlier_versions_wrote_still_loads(tiny_model_dir, tmp_path, legacy_model):
    import mlflow.pyfunc

    from forgeflow.inference.generation import ChatGenerator

    old = legacy_model(tiny_model_dir, tmp_path / "old")
    assert (old / "python_model.pkl").is_file()
    assert hf_model_dir(old) == old / "artifacts" / "model"
    generator = ChatGenerator(old)
    try:
        assert generator.model_dir == old / "artifacts" / "model"
    finally:
        generator.close()
    loaded = mlflow.pyfunc.load_model(str(old))
    assert isinstance(loaded.predict(HI, params={"max_new_tokens": 2}), str)
    # a setting it cannot honour is refused by name, never dropped; Azure's max_tokens is max_new_tokens
    assert isinstance(loaded.predict({"messages": HI, "parameters": {"max_tokens": 2}}), str)
    with pytest.raises(InvalidInput, match="params.num_beams") as refused:
        loaded.predict({"messages": HI, "params": {"num_beams": 4}})
    assert refused.value.field == "params.num_beams"


def test_errors(tmp_path, tiny_model_dir, saved_model):
    with pytest.raises(NotFound, match="no config.json"):
        save_chat_model(tmp_path, tmp_path / "out")
    with pytest.raises(InvalidInput, match="already exists"):
        save_chat_model(tiny_model_dir, saved_model)
    with pytest.raises(NotFound, match="adapter"):
        save_chat_model(tiny_model_dir, tmp_path / "out2", adapter_dir=tmp_path / "adapter")
    with pytest.raises(NotFound, match="neither an MLflow model"):
        hf_model_dir(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(saved_model, broken, ignore=shutil.ignore_patterns("model.safetensors", "config.json"))
    with pytest.raises(NotFound, match="holds no Hugging Face checkpoint"):
        hf_model_dir(broken)
    apart = tmp_path / "apart"  # as MLflow itself saves: the tokenizer only under components/
    shutil.copytree(saved_model, apart, ignore=shutil.ignore_patterns("tokenizer*", "chat_template.jinja"))
    shutil.copytree(saved_model / "components", apart / "components", dirs_exist_ok=True)
    with pytest.raises(InvalidInput, match="copy the files of .*components/tokenizer") as exc:
        hf_model_dir(apart)
    assert exc.value.field == "model"
    escaping = tmp_path / "escaping"
    shutil.copytree(saved_model, escaping)
    mlmodel = escaping / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace("model_binary: model", f"model_binary: {tiny_model_dir}"))
    with pytest.raises(InvalidInput, match="inside the model folder"):
        hf_model_dir(escaping)
