"""Several fine-tunes of one base on one deployment, through a real `forgeflow serve`: two LoRA fine-tunes of the
tiny model are registered as a fine-tuning job saves them (the merged model, its adapter/ and its base model in
the MLflow metadata), each deployed alone and both together on one deployment. A request naming a fine-tune (its
`model` on the OpenAI route, the `x-forgeflow-model` header on /score) gets the answer that fine-tune's own
deployment gives, greedy; the endpoint's /v1/models lists both. Once on the transformers runtime, once on llama.cpp
(f16 GGUF, the adapters as GGUF LoRA files; a llamacpp deployment that names no GGUF type serves q4_k_m)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
import pytest
from live_server import LiveServer
from tiny import build_tiny_adapter

pytestmark = pytest.mark.integration

USER = {"role": "user", "content": "What is the capital of France?"}
CHAT = {"messages": [USER], "temperature": 0, "max_tokens": 8}
SCORE = {"input_data": {"input_string": [USER], "parameters": {"temperature": 0, "max_new_tokens": 8}}}


def _fine_tune(base: Path, root: Path, seed: int) -> Path:
    """A saved fine-tune as a LoRA job leaves it: the adapter merged into the base in model/, the adapter in
    adapter/, the base model in the MLflow metadata."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from forgeflow.registry.mlflow_format import save_chat_model

    adapter = build_tiny_adapter(base, root / f"adapter-{seed}", seed=seed)
    merged = root / f"merged-{seed}"
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload() \
        .save_pretrained(merged)
    for item in base.iterdir():
        if "token" in item.name or item.suffix == ".jinja":
            (merged / item.name).write_bytes(item.read_bytes())
    return save_chat_model(merged, root / f"saved-{seed}", adapter_dir=adapter, metadata={"base_model": str(base)})


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_model_dir) -> list[Path]:
    root = tmp_path_factory.mktemp("fine-tunes")
    return [_fine_tune(tiny_model_dir, root, seed) for seed in (1, 2)]


@pytest.mark.parametrize("runtime", ["transformers", pytest.param("llamacpp", marks=pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed: pip install "
    "'forgeflow[llamacpp]' (make test installs it)"))])
def test_two_fine_tunes_on_one_deployment_answer_as_their_own_deployments(tmp_path, tiny_model_dir, saved, runtime):
    s = LiveServer.on_loopback(tmp_path / "home")
    s.start()
    # the tiny model's rows are no multiple of 256, so llama.cpp's k-quants fall back: compare on exact f16 weights
    how = ["--runtime", runtime] + (["--set", "gguf_type=f16"] if runtime == "llamacpp" else [])
    try:
        for name, folder in zip(("tuned-a", "tuned-b"), saved):
            s.cli("model", "create", "--name", name, "--path", str(folder))
        s.cli("online-endpoint", "create", "--name", "ft-ep")
        for name, model in (("solo-a", "tuned-a:1"), ("solo-b", "tuned-b:1")):
            dep = s.cli_json("online-deployment", "create", "--name", name, "--endpoint-name", "ft-ep",
                             "--model", model, *how)
            assert dep["provisioning_state"] == "Succeeded", dep
        both = s.cli_json("online-deployment", "create", "--name", "both", "--endpoint-name", "ft-ep",
                          "--model", "tuned-a:1", "--model", "tuned-b:1", "--all-traffic", *how)
        assert both["provisioning_state"] == "Succeeded", both
        assert both["model"] == ["tuned-a:1", "tuned-b:1"] and both["base_model"] == str(tiny_model_dir)
        assert both["model_path"] == str(tiny_model_dir.resolve())
        assert both["gguf_type"] == ("f16" if runtime == "llamacpp" else None)
        listed = s.cli("online-deployment", "list", "--endpoint-name", "ft-ep").stdout
        assert "tuned-a:1, tuned-b:1" in listed

        key = s.cli_json("online-endpoint", "get-credentials", "--name", "ft-ep")["primary_key"]
        base = s.cli_json("online-endpoint", "show", "--name", "ft-ep")["scoring_uri"].removesuffix("/score")
        auth = {"Authorization": f"Bearer {key}"}

        def chat(model: str) -> dict:
            r = httpx.post(f"{base}/v1/chat/completions", json=CHAT | {"model": model}, headers=auth, timeout=120)
            assert r.status_code == 200, r.text
            return r.json() | {"deployment": r.headers["azureml-model-deployment"]}

        def score(headers: dict) -> tuple[str, str]:
            r = httpx.post(f"{base}/score", json=SCORE, headers=auth | headers, timeout=120)
            assert r.status_code == 200, r.text
            return r.json()["output"], r.headers["azureml-model-deployment"]

        answers = {}
        for short, ref, solo in (("tuned-a", "tuned-a:1", "solo-a"), ("tuned-b", "tuned-b:1", "solo-b")):
            alone = chat(solo)
            shared = chat(short)
            assert (shared["deployment"], shared["model"]) == ("both", ref)
            assert shared["choices"][0]["message"]["content"] == alone["choices"][0]["message"]["content"], ref
            answers[ref] = alone["choices"][0]["message"]["content"]
            assert score({"x-forgeflow-model": ref}) == (score({"azureml-model-deployment": solo})[0], "both")
        assert answers["tuned-a:1"] != answers["tuned-b:1"]

        models = httpx.get(f"{base}/v1/models", headers=auth, timeout=30).json()["data"]
        assert {"tuned-a:1", "tuned-b:1"} <= {m["id"] for m in models}
        if runtime == "llamacpp":  # naming no GGUF type, a llamacpp deployment serves q4_k_m
            quant = s.cli_json("online-deployment", "create", "--name", "quant", "--endpoint-name", "ft-ep",
                               "--model", "tuned-a:1", "--runtime", "llamacpp")
            assert (quant["provisioning_state"], quant["gguf_type"]) == ("Succeeded", "q4_k_m"), quant
            assert len(chat("quant")["choices"]) == 1
    finally:
        s.stop()
