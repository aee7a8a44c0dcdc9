"""`forgeflow model export` through the real REST app in process: each format lands in --out and loads with the
tool it is meant for (transformers, MLflow, llama.cpp)."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
from in_process import in_process_cli

from forgeflow.registry import models
from forgeflow.registry.mlflow_format import save_chat_model

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the .timeout. argument")
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def saved(tiny_model_dir, tmp_path_factory):
    return save_chat_model(tiny_model_dir, tmp_path_factory.mktemp("saved") / "model")


@pytest.fixture
def cli(monkeypatch, saved, tiny_model_dir, tmp_path):
    """quill:1 saved as forgeflow saves models, quill:2 a bare checkpoint; `forgeflow model ...` as the owner."""
    from forgeflow.cli import models as cli_models

    with in_process_cli(monkeypatch, (cli_models,), prefix=("model",), token=lambda ws: ws.admin_token()) as invoke:
        models.register("quill", saved)
        models.register("quill", shutil.copytree(tiny_model_dir, tmp_path / "bare"))
        yield invoke


def test_safetensors_export_loads_in_transformers(cli, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "st"
    result = json.loads(cli("export", "quill:1", "--format", "safetensors", "--out", str(out), "--json").stdout)
    assert result["path"] == str(out) and result["quantize"] is None
    assert AutoModelForCausalLM.from_pretrained(out).config.architectures == ["LlamaForCausalLM"]
    assert AutoTokenizer.from_pretrained(out).apply_chat_template(HI, add_generation_prompt=True, tokenize=False)
    assert not list(out.glob("*.gguf"))


def test_mlflow_export_loads_in_mlflow(cli, tmp_path):
    import mlflow.pyfunc
    from mlflow.types.llm import ChatCompletionResponse

    for version in ("1", "2"):  # a copy of an MLflow model; a bare checkpoint saved in MLflow format on the way
        out = tmp_path / f"mlflow-{version}"
        cli("export", f"quill:{version}", "--format", "mlflow", "--out", str(out))
        assert (out / "MLmodel").is_file() and (out / "requirements.txt").is_file()
        [answer] = mlflow.pyfunc.load_model(str(out)).predict({"messages": HI, "max_tokens": 2})
        assert ChatCompletionResponse.from_dict(answer).choices[0].message.role == "assistant"
    assert not list(tmp_path.glob(".mlflow-*"))


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_gguf_export_loads_in_llama_cpp(cli, tmp_path):
    from llama_cpp import Llama

    out = tmp_path / "gguf"
    res = cli("export", "quill", "--format", "gguf", "--quantize", "q8_0", "--out", str(out))  # NAME: the latest
    assert "exported quill:2 as gguf q8_0" in res.stdout
    assert [p.name for p in out.iterdir()] == ["quill-2-q8_0.gguf"]
    llm = Llama(model_path=str(out / "quill-2-q8_0.gguf"), n_ctx=256, verbose=False)
    try:
        answer = llm.create_chat_completion(HI, temperature=0, max_tokens=3)
    finally:
        llm.close()
    assert answer["choices"][0]["finish_reason"] in ("stop", "length") and answer["usage"]["prompt_tokens"] > 0


def test_export_refusals(cli, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("x")
    res = cli("export", "quill:1", "--format", "gguf", "--out", str(taken), ok=False)
    assert res.exit_code != 0 and "not empty" in res.output
    res = cli("export", "quill:1", "--format", "safetensors", "--quantize", "q8_0", "--out", str(tmp_path / "a"),
              ok=False)
    assert res.exit_code != 0 and "quantize" in res.output
    res = cli("export", "quill:1", "--format", "gguf", "--quantize", "", "--out", str(tmp_path / "a"), ok=False)
    assert res.exit_code != 0 and "quantize" in res.output  # an empty level is refused, not the default
    res = cli("export", "quill:7", "--format", "gguf", "--out", str(tmp_path / "b"), ok=False)
    assert res.exit_code != 0 and "no version 7" in res.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
