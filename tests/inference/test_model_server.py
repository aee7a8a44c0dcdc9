from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import forgeflow
from forgeflow.chat import ChatRequest, Sampling, chat_request
from forgeflow.errors import NotFound
from forgeflow.inference.generation import ChatGenerator
from forgeflow.inference.instance_guard import InstanceGuard, allowed_hosts
from forgeflow.inference.model_server import create_app
from forgeflow.inference.runtimes.base import GenerationResult, TokenStream

USER = {"role": "user", "content": "What is the capital of France?"}


def score_body(**parameters):
    return {"input_data": {"input_string": [USER], "parameters": parameters}}


@pytest.fixture(scope="module")
def generator(tiny_model_dir) -> ChatGenerator:
    return ChatGenerator(tiny_model_dir)


# -- generation ---------------------------------------------------------------------------------


def test_greedy_is_deterministic_and_counts_tokens(generator):
    first = generator.generate(chat_request([USER], temperature=0, max_new_tokens=12))
    second = generator.generate(chat_request([USER], do_sample=False, temperature=0.9, max_new_tokens=12))
    assert first == second
    assert isinstance(first, GenerationResult)
    assert 1 <= first.completion_tokens <= 12
    expected_prompt = generator.tokenizer.apply_chat_template([USER], add_generation_prompt=True, return_dict=True)
    assert first.prompt_tokens == len(expected_prompt["input_ids"])
    assert first.finish_reason in {"stop", "length"}
    assert "<|im_end|>" not in first.text and "<|im_start|>" not in first.text


def test_max_new_tokens_is_respected(generator):
    for limit in (1, 5):
        result = generator.generate(chat_request([USER], temperature=0, max_new_tokens=limit))
        assert result.completion_tokens <= limit
        if result.finish_reason == "length":
            assert result.completion_tokens == limit


def test_sampling_with_a_seed_repeats(generator):
    kwargs = dict(temperature=1.0, top_p=0.9, do_sample=True, max_new_tokens=8, seed=3)
    assert generator.generate(chat_request([USER], **kwargs)) == generator.generate(chat_request([USER], **kwargs))


def test_stops_at_eos(generator):
    eos = generator.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert eos in generator.eos_token_ids
    with torch_bias(generator.model, eos):
        result = generator.generate(chat_request([USER], temperature=0, max_new_tokens=10))
    assert result == GenerationResult("", result.prompt_tokens, 1, "stop")


def test_generator_loads_an_mlflow_model_folder(tmp_path, tiny_model_dir):
    from forgeflow.registry.mlflow_format import save_chat_model

    saved = save_chat_model(tiny_model_dir, tmp_path / "mlflow_model")
    generator = ChatGenerator(saved)
    assert generator.model_dir == saved / "model"
    answer = generator.generate(chat_request([{"role": "user", "content": "hi"}], max_new_tokens=2))
    assert answer.completion_tokens >= 1


class torch_bias:
    """Make one token win every step by overwriting the LM head's logits."""

    def __init__(self, model, token_id: int) -> None:
        self.model, self.token_id = model, token_id

    def __enter__(self):
        def force(_module, _inputs, logits):
            logits = logits.clone()
            logits[..., self.token_id] = logits.max() + 100.0
            return logits

        self.handle = self.model.get_output_embeddings().register_forward_hook(force)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# -- the app in-process ---------------------------------------------------------------------------


async def _client_for(app):
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://model")


async def _wait_ready(app, client, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await client.get("/health")
        if response.status_code == 200:
            return response
        await _sleep(0.05)
    raise AssertionError(f"not ready: {response.json()}")


async def _sleep(seconds):
    import asyncio

    await asyncio.sleep(seconds)


def run_async(coro):
    import asyncio

    return asyncio.run(coro)


def with_app(factory, check, **options):
    """Run `check(client)` against the app with its lifespan started."""

    async def main():
        app = create_app(factory, name="tiny", **options)
        async with app.router.lifespan_context(app):
            async with await _client_for(app) as client:
                return await check(app, client)

    return run_async(main())


def test_app_scores_and_validates(generator):
    async def check(app, client):
        health = await _wait_ready(app, client)
        assert health.json()["status"] == "ready"

        ok = await client.post("/score", json={**score_body(temperature=0, max_new_tokens=6), "params": {}})
        assert ok.status_code == 200, ok.text
        expected = generator.generate(chat_request([USER], temperature=0, max_new_tokens=6))
        assert ok.json() == {"output": expected.text}
        assert ok.headers["x-forgeflow-prompt-tokens"] == str(expected.prompt_tokens)
        assert ok.headers["x-forgeflow-completion-tokens"] == str(expected.completion_tokens)

        cases = [
            ({}, "input_data"),
            ({"input_data": {"input_string": []}}, "input_data.input_string"),
            ({"input_data": {"input_string": [{"role": "bot", "content": "x"}]}}, "input_data.input_string[0].role"),
            (score_body(temperature=-1), "input_data.parameters.temperature"),
        ]
        for payload, field in cases:
            bad = await client.post("/score", json=payload)
            assert bad.status_code == 400, payload
            assert bad.json()["error"] == "InvalidInput"
            assert bad.json()["field"] == field
            assert bad.json()["message"].startswith(field)

        broken = await client.post("/score", content=b"{not json", headers={"content-type": "application/json"})
        assert broken.status_code == 400 and "valid JSON" in broken.json()["message"]

        chat = await client.post("/v1/chat/completions",
                                 json={"messages": [USER], "max_tokens": 4, "temperature": 0})
        assert chat.status_code == 200, chat.text
        answer = chat.json()
        assert answer["object"] == "chat.completion" and answer["model"] == "tiny"
        assert answer["choices"][0]["message"]["role"] == "assistant"
        assert answer["choices"][0]["finish_reason"] in {"stop", "length"}
        usage = answer["usage"]
        assert usage["completion_tokens"] <= 4
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        models = await client.get("/v1/models")
        assert models.json()["data"][0]["id"] == "tiny"

    with_app(lambda: generator, check)


def _sse(text: str) -> list:
    """The data events of a complete stream (the usage comment for the gateway left out)."""
    assert text.endswith("data: [DONE]\n\n"), text[-200:]
    events = [block for block in text.split("\n\n") if block and not block.startswith(": forgeflow-usage ")]
    assert all(e.startswith("data: ") for e in events)
    return [json.loads(e[len("data: "):]) for e in events[:-1]]


def _usage_comment(text: str) -> dict | None:
    comments = [b for b in text.split("\n\n") if b.startswith(": forgeflow-usage ")]
    assert len(comments) <= 1
    return json.loads(comments[0].removeprefix(": forgeflow-usage ")) if comments else None


def test_chat_streams_server_sent_events(generator):
    async def check(app, client):
        await _wait_ready(app, client)
        body = {"messages": [USER], "max_tokens": 6, "temperature": 0}
        plain = (await client.post("/v1/chat/completions", json=body)).json()
        streamed = await client.post("/v1/chat/completions",
                                     json={**body, "stream": True, "stream_options": {"include_usage": True}})
        assert streamed.status_code == 200, streamed.text
        assert streamed.headers["content-type"].startswith("text/event-stream")
        chunks = _sse(streamed.text)
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert len({c["id"] for c in chunks}) == 1
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == plain["choices"][0]["message"]["content"]
        final = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
        assert len(final) == 1 and final[0]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
        assert all(c["usage"] is None for c in chunks[:-1])

        assert _usage_comment(streamed.text) is None  # the client asked for the usage chunk: no comment
        without = (await client.post("/v1/chat/completions", json={**body, "stream": True})).text
        no_usage = _sse(without)
        assert all("usage" not in c for c in no_usage) and no_usage[-1]["choices"][0]["finish_reason"]
        assert _usage_comment(without) == plain["usage"]  # for the gateway's token metrics

        for bad, field in (({"stop": 3}, "stop"), ({"stop": ["a"] * 5}, "stop"),
                           ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
                           ({"stream": "yes"}, "stream")):
            answer = await client.post("/v1/chat/completions", json={**body, **bad})
            assert answer.status_code == 400 and answer.json()["error"]["param"] == field, answer.text
        # a bad request is refused before the stream starts
        refused = await client.post("/v1/chat/completions",
                                    json={"messages": [{"role": "robot", "content": "x"}], "stream": True})
        assert refused.status_code == 400
        stats = (await client.get("/stats")).json()
        assert stats["ready"] and stats["runtime"] == "transformers" and stats["waiting"] == 0

    with_app(lambda: generator, check)


class Double:
    """A runtime that answers "Paris." in two tokens; it records the requests it got."""

    name = "double"
    failure = None

    def __init__(self) -> None:
        self.requests = []

    def stream(self, request):
        self.requests.append(request)
        return TokenStream(iter([(0, None), (1, "stop")]), lambda ids: "Paris."[: 3 * len(ids)], 5, request.stop)

    def generate(self, request):
        return self.stream(request).run()

    def health(self):
        return {"runtime": self.name}

    def close(self):
        pass


def test_the_runtime_gets_the_typed_request_and_streams():
    runtime = Double()

    async def check(app, client):
        await _wait_ready(app, client)
        answer = await client.post("/v1/chat/completions", json={"messages": [USER], "stream": True, "seed": 4})
        chunks = _sse(answer.text)
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Paris."
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        scored = await client.post("/score", json=score_body(temperature=0.5))
        assert scored.json() == {"output": "Paris."}
        assert runtime.requests == [ChatRequest([USER], 7, Sampling(greedy=False, temperature=1.0, seed=4)),
                                    ChatRequest([USER], 7, Sampling(greedy=False, temperature=0.5))]
        assert (await client.get("/stats")).json() == {"name": "tiny", "ready": True, "runtime": "double"}

    with_app(lambda: runtime, check, default_max_new_tokens=7)


def test_health_is_503_while_loading_and_failures_are_500():
    import threading

    release = threading.Event()

    class Broken(Double):
        def stream(self, request):
            raise RuntimeError("out of memory")

    def slow_factory():
        release.wait(10)
        return Broken()

    async def check(app, client):
        loading = await client.get("/health")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        early = await client.post("/score", json=score_body())
        assert early.status_code == 503
        release.set()
        await _wait_ready(app, client)
        failed = await client.post("/score", json=score_body())
        assert failed.status_code == 500
        assert "out of memory" in failed.json()["message"]

    with_app(slow_factory, check)


def test_load_failure_shows_in_health():
    def factory():
        raise NotFound("no config.json")

    async def check(app, client):
        for _ in range(100):
            health = await client.get("/health")
            if health.json()["status"] != "loading":
                break
            await _sleep(0.02)
        assert health.status_code == 503
        assert health.json()["status"] == "failed" and "no config.json" in health.json()["message"]
        score = await client.post("/score", json=score_body())
        assert score.status_code == 424

    with_app(factory, check)


def test_the_guard_lets_only_the_gateway_in():
    """issue 10, finding 1: an instance answers only a request that names its address in Host, carries its
    secret, and sends a body within its limit; everything else is refused before the app sees it."""
    assert allowed_hosts("127.0.0.1", 5000) == {"127.0.0.1:5000", "localhost:5000"}
    assert allowed_hosts("::1", 5000) == {"[::1]:5000", "localhost:5000"}
    runtime = Double()
    app = create_app(lambda: runtime, name="tiny")
    app.add_middleware(InstanceGuard, secret="s3cret-instance-key", hosts=allowed_hosts("127.0.0.1", 5000),
                       max_body_bytes=2048)
    key = {"authorization": "Bearer s3cret-instance-key"}

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:5000") as client:
                for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret-instance-key"},
                                {"api-key": "s3cret-instance-key"}):
                    for call in (client.get("/health", headers=headers),
                                 client.post("/score", json=score_body(), headers=headers)):
                        refused = await call
                        assert refused.status_code == 401 and refused.json()["error"] == "Unauthorized", headers
                for host in ("evil.example:5000", "127.0.0.1:5001", "127.0.0.1", "attacker.test"):
                    misdirected = await client.get("/health", headers=key | {"host": host})
                    assert misdirected.status_code == 400 and misdirected.json()["field"] == "host", host
                assert runtime.requests == []
                async with httpx.AsyncClient(transport=transport, base_url="http://localhost:5000",
                                             headers=key) as keyed:
                    await _wait_ready(app, keyed)
                big = score_body(filler="x" * 3000)
                assert (await client.post("/score", json=big, headers=key)).status_code == 413

                async def chunked():  # no content-length: the guard counts what arrives
                    for _ in range(4):
                        yield b" " * 1000
                    yield json.dumps(score_body()).encode()

                too_long = await client.post("/score", content=chunked(), headers=key)
                assert too_long.status_code == 413 and "2048" in too_long.json()["message"]
                assert runtime.requests == []
                ok = await client.post("/score", json=score_body(), headers=key)
                assert ok.status_code == 200 and ok.json() == {"output": "Paris."}

    run_async(main())


# -- the real process on loopback ------------------------------------------------------------------


def _instance_env(secret: str | None = "the-instance-secret", **extra: str) -> dict:
    """What a placement gives an instance: the source on the path and the secret in the environment."""
    env = {k: v for k, v in os.environ.items() if k != "FORGEFLOW_INSTANCE_SECRET"}
    src = str(Path(forgeflow.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    if secret:
        env["FORGEFLOW_INSTANCE_SECRET"] = secret
    return env | extra


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_real_process_serves_only_its_gateway_and_exits_with_it(tiny_model_dir):
    """issue 10, findings 1 and 2: the model-server process refuses a request without its secret, with a
    wrong Host or an oversized body, answers its gateway, and exits once the server holding its lifeline
    is gone."""
    port = _free_port()
    read_end, lifeline = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "forgeflow.inference.model_server", "--model-dir", str(tiny_model_dir),
         "--port", str(port), "--name", "tiny-blue", "--max-body-bytes", "4096"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, pass_fds=(read_end,),
        env=_instance_env(FORGEFLOW_LIFELINE_FD=str(read_end)),
    )
    os.close(read_end)
    try:
        line = proc.stdout.readline()
        assert line.strip() == f"READY {port}", proc.stderr.read() if proc.poll() is not None else line
        assert b"the-instance-secret" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        base = f"http://127.0.0.1:{port}"
        key = {"Authorization": "Bearer the-instance-secret"}
        assert httpx.get(f"{base}/health", timeout=10).status_code == 401
        for headers in ({}, {"Authorization": "Bearer not-the-secret"}):
            refused = httpx.post(f"{base}/score", json=score_body(), headers=headers, timeout=10)
            assert refused.status_code == 401 and refused.json()["error"] == "Unauthorized"
        rebound = httpx.post(f"{base}/score", json=score_body(), headers=key | {"Host": f"rebind.example:{port}"},
                             timeout=10)
        assert rebound.status_code == 400 and rebound.json()["field"] == "host"
        big = httpx.post(f"{base}/score", json=score_body(filler="x" * 5000), headers=key, timeout=10)
        assert big.status_code == 413
        health = httpx.get(f"{base}/health", headers=key, timeout=10)
        assert health.status_code == 200 and health.json() == {"status": "ready", "name": "tiny-blue"}
        local = httpx.get(f"http://localhost:{port}/health", headers=key, timeout=10)
        assert local.status_code == 200
        scored = httpx.post(f"{base}/score", json=score_body(temperature=0, max_new_tokens=5), headers=key, timeout=60)
        assert scored.status_code == 200, scored.text
        assert isinstance(scored.json()["output"], str)
        assert int(scored.headers["x-forgeflow-completion-tokens"]) <= 5
        bad = httpx.post(f"{base}/score", json={"params": {}}, headers=key, timeout=10)
        assert bad.status_code == 400 and bad.json()["field"] == "input_data"

        os.close(lifeline)  # what the kernel does when the server holding it dies
        lifeline = -1
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status reports it.
        assert proc.wait(timeout=30) in (0, -15)
    finally:
        if lifeline >= 0:
            os.close(lifeline)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.integration
def test_real_process_will_not_start_without_a_secret(tmp_path):
    """issue 10, finding 1: an instance started without a secret would answer anyone: it refuses to start."""
    done = subprocess.run(
        [sys.executable, "-m", "forgeflow.inference.model_server", "--model-dir", str(tmp_path),
         "--port", str(_free_port())],
        capture_output=True, text=True, env=_instance_env(secret=None), timeout=120,
    )
    assert done.returncode == 2 and "FORGEFLOW_INSTANCE_SECRET" in done.stderr


@pytest.mark.integration
def test_real_process_exits_when_the_model_cannot_load(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "forgeflow.inference.model_server", "--model-dir", str(tmp_path),
         "--port", str(_free_port())],
        capture_output=True, text=True, env=_instance_env(), timeout=120,
    )
    assert done.returncode == 1
    assert "READY" not in done.stdout
    assert "failed to load" in done.stderr


def test_a_message_name_reaches_a_template_that_uses_it(tiny_model_dir):
    """A message's `name` is in the turn the chat template renders: a template that uses it shows it."""
    from transformers import AutoTokenizer

    from forgeflow.chat import parse_chat_completion_request
    from forgeflow.inference.runtimes.base import PromptEncoder

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = ("{% for m in messages %}{{ m.role }}{% if m.name %} ({{ m.name }}){% endif %}: "
                               "{{ m.content }}\n{% endfor %}")
    request = parse_chat_completion_request({"messages": [{"role": "user", "content": "hi", "name": "alice"},
                                                          {"role": "user", "content": "yo"}]}).to_request()
    assert tokenizer.decode(PromptEncoder(tokenizer, None).encode(request.messages)) == "user (alice): hi\nuser: yo\n"
