"""An instance serving several fine-tunes of one base: its flags, which adapter a request picks (OpenAI's `model`,
/score's header), what the answer and /v1/models say, and with the real transformers runtime, that each adapter
answers as its fine-tune merged into the base does."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from tiny import build_tiny_adapter

from forgeflow.errors import InvalidInput
from forgeflow.inference.adapters import MODEL_HEADER, AdapterCatalog
from forgeflow.inference.model_server import _parse_args, adapters_of, create_app, main
from forgeflow.inference.runtimes.base import TokenStream

USER = {"role": "user", "content": "What is the capital of France?"}
SCORE = {"input_data": {"input_string": [USER], "parameters": {"max_new_tokens": 8, "temperature": 0}}}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"tuned-a:1": build_tiny_adapter(tiny_model_dir, root / "a", seed=1),
            "tuned-b:3": build_tiny_adapter(tiny_model_dir, root / "b", seed=2)}


def test_the_adapter_flags_parse_in_order_with_their_limits(adapters):
    args = _parse_args(["--model-dir", "/m/base", "--port", "0", "--adapter", f"tuned-a:1={adapters['tuned-a:1']}",
                        "--adapter", f"tuned-b:3={adapters['tuned-b:3']}", "--no-prefix-cache",
                        "--max-batch-size", "4"])
    assert list(adapters_of(args)) == ["tuned-a:1", "tuned-b:3"]
    assert (args.max_adapters, args.prefix_cache, args.max_batch_size, args.gguf_type) == (8, False, 4, "f16")
    plain = _parse_args(["--model-dir", "/m", "--port", "0", "--max-adapters", "2", "--gguf-type", "q4_k_m"])
    assert adapters_of(plain) == {} and plain.prefix_cache and plain.max_adapters == 2
    for flags, field in ((["--adapter", "tuned-a:1=/a", "--adapter", "tuned-a:1=/b"], "adapter"),
                         (["--adapter", "tuned-a=/a"], "adapter"), (["--adapter", "tuned-a:1"], "adapter"),
                         (["--max-adapters", "0"], "max_adapters"), (["--max-batch-size", "0"], "max_batch_size")):
        with pytest.raises(InvalidInput) as caught:
            adapters_of(_parse_args(["--model-dir", "/m", "--port", "0", *flags]))
        assert caught.value.field == field, flags


def test_a_bad_adapter_stops_the_server_before_it_loads_anything(tmp_path, capsys):
    assert main(["--model-dir", str(tmp_path), "--port", "0", "--adapter", "tuned-a:1=/nowhere"]) == 2
    assert "adapter_config.json" in capsys.readouterr().err
    assert main(["--model-dir", str(tmp_path), "--port", "0", "--adapter", "no-version=/x"]) == 2
    assert "NAME:VERSION" in capsys.readouterr().err


class Recorder:
    """A runtime that answers "Paris." and records which adapter each request asked for (the runtimes' own
    adapter tests prove the answers; this proves the instance's choice reaches them)."""

    name = "recorder"
    failure = None

    def __init__(self) -> None:
        self.adapters: list[str | None] = []

    def stream(self, request, adapter=None):
        self.adapters.append(adapter)
        return TokenStream(iter([(0, None), (1, "stop")]), lambda ids: "Paris."[: 3 * len(ids)], 5, request.stop)

    def generate(self, request, adapter=None):
        return self.stream(request, adapter).run()

    def health(self):
        return {"runtime": self.name}

    def close(self):
        pass


def _serve(runtime_factory, check, catalog: AdapterCatalog):
    import asyncio
    import time

    async def run():
        app = create_app(runtime_factory, name="ft", catalog=catalog)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model") as c:
                deadline = time.monotonic() + 120
                while (await c.get("/health")).status_code != 200:
                    assert time.monotonic() < deadline, (await c.get("/health")).json()
                    await asyncio.sleep(0.05)
                return await check(c)

    return asyncio.run(run())


def test_a_requests_model_or_header_picks_the_adapter_and_the_answer_names_it(adapters):
    runtime = Recorder()

    async def check(c):
        answer = await c.post("/v1/chat/completions", json={"model": "tuned-b", "messages": [USER]})
        assert answer.json()["model"] == "tuned-b:3"
        answer = await c.post("/v1/completions", json={"model": "tuned-a:1", "prompt": "x", "stream": True})
        assert '"model": "tuned-a:1"' in answer.text
        answer = await c.post("/v1/chat/completions", json={"model": "ft", "messages": [USER]})
        assert answer.json()["model"] == "tuned-a:1"  # the deployment's own name: the first adapter
        assert (await c.post("/score", json=SCORE, headers={MODEL_HEADER: "tuned-b:3"})).status_code == 200
        assert (await c.post("/score", json=SCORE)).status_code == 200
        assert runtime.adapters == ["tuned-b:3", "tuned-a:1", "tuned-a:1", "tuned-b:3", "tuned-a:1"]
        # a body without `model` (an Azure client's): the header the gateway forwards picks
        answer = await c.post("/v1/chat/completions", json={"messages": [USER]}, headers={MODEL_HEADER: "tuned-b"})
        assert answer.json()["model"] == "tuned-b:3" and runtime.adapters.pop() == "tuned-b:3"
        answer = await c.post("/v1/completions", json={"prompt": "x"}, headers={MODEL_HEADER: "tuned-b:3"})
        assert answer.json()["model"] == "tuned-b:3" and runtime.adapters.pop() == "tuned-b:3"
        missing = await c.post("/v1/chat/completions", json={"model": "tuned-a:2", "messages": [USER]})
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
        missing = await c.post("/score", json=SCORE, headers={MODEL_HEADER: "tuned-b:1"})
        assert missing.status_code == 404 and missing.json()["field"] == "model"
        assert len(runtime.adapters) == 5  # refused before the runtime
        listed = (await c.get("/v1/models")).json()["data"]
        assert [m["id"] for m in listed] == ["ft", "tuned-a:1", "tuned-b:3"]
        assert (await c.get("/v1/models/tuned-b:3")).json()["parent"] == "ft"
        assert (await c.get("/v1/models/tuned-a")).json()["id"] == "tuned-a:1"  # as a request's model names it
        assert (await c.get("/v1/models/tuned-c:1")).status_code == 404
        assert (await c.get("/stats")).json()["adapters"] == ["tuned-a:1", "tuned-b:3"]

    _serve(lambda: runtime, check, AdapterCatalog(adapters))


def test_without_adapters_the_runtime_is_called_as_before():
    runtime = Recorder()

    async def check(c):
        answer = await c.post("/v1/chat/completions", json={"model": "anything", "messages": [USER]})
        assert answer.json()["model"] == "anything"
        assert [m["id"] for m in (await c.get("/v1/models")).json()["data"]] == ["ft"]
        assert "adapters" not in (await c.get("/stats")).json()
        assert runtime.adapters == [None]

    _serve(lambda: runtime, check, AdapterCatalog())


# -- the real transformers runtime ----------------------------------------------------------------------------


def _merged(base: Path, adapter: Path, out: Path) -> Path:
    """The fine-tune as a deployment of it alone serves it: the adapter merged into the base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload() \
        .save_pretrained(out)
    for item in base.iterdir():
        if "token" in item.name or item.suffix == ".jinja":
            shutil.copy(item, out / item.name)
    return out


def test_each_adapter_answers_as_its_merged_fine_tune(tmp_path, tiny_model_dir, adapters):
    from forgeflow.chat import chat_request
    from forgeflow.inference.runtimes import load_runtime

    expected = {}
    for name, adapter in adapters.items():
        merged = load_runtime("transformers", _merged(tiny_model_dir, adapter, tmp_path / name.replace(":", "-")))
        try:
            expected[name] = merged.generate(chat_request([USER], temperature=0, max_new_tokens=8)).text
        finally:
            merged.close()
    assert expected["tuned-a:1"] != expected["tuned-b:3"]

    async def check(c):
        for name in adapters:
            answer = await c.post("/v1/chat/completions", json={"model": name.split(":")[0], "messages": [USER],
                                                                "temperature": 0, "max_tokens": 8})
            assert answer.json()["model"] == name
            assert answer.json()["choices"][0]["message"]["content"] == expected[name], name
            scored = await c.post("/score", json=SCORE, headers={MODEL_HEADER: name})
            assert scored.json()["output"] == expected[name], name
        assert [m["id"] for m in (await c.get("/v1/models")).json()["data"]] == ["ft", *adapters]

    _serve(lambda: load_runtime("transformers", tiny_model_dir, adapters=adapters), check, AdapterCatalog(adapters))

