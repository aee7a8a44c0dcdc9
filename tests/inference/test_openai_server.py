"""The OpenAI surface of a model instance, with a scripted runtime: what is under test is the server's
translation (n choices as n sequences, logprobs and tool calls in OpenAI's shapes, interleaved streams, the
legacy completions shape, OpenAI's error shape on /v1 and 400 for a value the runtime refuses)."""

from __future__ import annotations

import asyncio
import json
import threading
import types

import anyio.to_thread
import httpx
import pytest

from forgeflow.chat import ChatRequest
from forgeflow.inference import openai_server
from forgeflow.inference.model_server import create_app
from forgeflow.inference.runtimes.base import GenerationResult, StreamEvent, TokenLogprob, ToolCall

USER = {"role": "user", "content": "What is the capital of France?"}
CHAT = "/v1/chat/completions"
TOOL = {"type": "function", "function": {"name": "capital", "parameters": {
    "type": "object", "properties": {"country": {"type": "string"}}, "required": ["country"]}}}


class ScriptedStream:
    """A runtime's token stream whose tokens follow from its request: "Par" "is" "." (or "seed<N>" " ok" when
    seeded), each with a logprob and its alternatives when asked; a tool call when tools are offered."""

    def __init__(self, runtime: Scripted, request: ChatRequest) -> None:
        self.runtime, self.request = runtime, request
        self.prompt_tokens = 5
        seed = request.sampling.seed
        self.pieces = ["Par", "is", "."] if seed is None else [f"seed{seed}", " ok"]
        self.calls = ()
        if request.tools and request.tools.choice != "none":
            chosen = request.tools.choice if request.tools.choice not in ("auto", "required") else \
                request.tools.definitions[0]["function"]["name"]
            self.pieces, self.calls = [], (ToolCall(f"call_{len(runtime.requests) - 1}", chosen, '{"country": "France"}'),)

    def _logprob(self, index: int, piece: str) -> TokenLogprob:
        alternatives = (("Rome", -2.5), ("Berlin", -3.0), ("Oslo", -4.0))[: self.request.logprobs or 0]
        return TokenLogprob(piece, -0.25 * (index + 1), tuple(piece.encode()), alternatives)

    def __iter__(self):
        asked = self.request.logprobs is not None
        logprobs = tuple(self._logprob(i, p) for i, p in enumerate(self.pieces))
        for i, piece in enumerate(self.pieces):
            yield StreamEvent(piece, None, (logprobs[i],) if asked else ())
        finish = "tool_calls" if self.calls else "stop"
        result = GenerationResult("".join(self.pieces), self.prompt_tokens, len(self.pieces) + len(self.calls), finish,
                                  logprobs if asked else None, self.calls)
        yield StreamEvent("", result)

    def cancel(self) -> None:
        self.runtime.cancelled += 1

    def run(self) -> GenerationResult:
        return [e for e in self][-1].result


class Scripted:
    """A runtime that records the requests it got; `refuse` makes `stream` raise ValueError for some of them, as a
    runtime does for a value it cannot take."""

    name = "scripted"
    failure = None

    def __init__(self, refuse=lambda request: False) -> None:
        self.requests: list[ChatRequest] = []
        self.cancelled = 0
        self.refuse = refuse

    def stream(self, request):
        if self.refuse(request):
            raise ValueError("logit_bias names token 99999, past this model's vocabulary of 400")
        self.requests.append(request)
        return ScriptedStream(self, request)

    def generate(self, request):
        return self.stream(request).run()

    def health(self):
        return {"runtime": self.name}

    def close(self):
        pass


def serve(runtime, check):
    async def main():
        app = create_app(lambda: runtime, name="tiny", default_max_new_tokens=7)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model") as client:
                for _ in range(200):
                    if (await client.get("/health")).status_code == 200:
                        break
                    await asyncio.sleep(0.01)
                return await check(client)

    return asyncio.run(main())


def events(response) -> list[dict]:
    """The data events of a complete stream (the usage comment for the gateway left out)."""
    assert response.status_code == 200, response.text
    assert response.text.endswith("data: [DONE]\n\n"), response.text[-300:]
    blocks = [b for b in response.text.split("\n\n") if b and not b.startswith(": forgeflow-usage ")]
    return [json.loads(b[len("data: "):]) for b in blocks[:-1]]


def test_n_choices_are_sequences_of_their_own():
    runtime = Scripted()

    async def check(client):
        answer = (await client.post(CHAT, json={"messages": [USER], "n": 3, "seed": 40, "model": "blue"})).json()
        assert sorted(r.sampling.seed for r in runtime.requests) == [40, 41, 42]  # queued from worker threads
        assert answer["object"] == "chat.completion" and answer["model"] == "blue" and answer["created"] > 0
        assert [c["index"] for c in answer["choices"]] == [0, 1, 2]
        assert [c["message"]["content"] for c in answer["choices"]] == ["seed40 ok", "seed41 ok", "seed42 ok"]
        assert all(c["logprobs"] is None and c["finish_reason"] == "stop" for c in answer["choices"])
        assert answer["usage"] == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}

        runtime.requests.clear()
        streamed = events(await client.post(CHAT, json={"messages": [USER], "n": 2, "seed": 7, "stream": True,
                                                        "stream_options": {"include_usage": True}}))
        assert len({c["id"] for c in streamed}) == 1
        assert all(c["object"] == "chat.completion.chunk" for c in streamed)
        for index in (0, 1):
            mine = [c["choices"][0] for c in streamed if c["choices"] and c["choices"][0]["index"] == index]
            assert mine[0]["delta"] == {"role": "assistant", "content": ""}
            assert "".join(c["delta"].get("content", "") for c in mine) == f"seed{7 + index} ok"
            assert [c["finish_reason"] for c in mine if c["finish_reason"]] == ["stop"]
        assert streamed[-1]["choices"] == [] and streamed[-1]["usage"]["completion_tokens"] == 4
        assert runtime.cancelled >= 2  # every choice's sequence is let go once the stream ends

    serve(runtime, check)


def test_logprobs_in_openai_shapes():
    runtime = Scripted()

    async def check(client):
        answer = (await client.post(CHAT, json={"messages": [USER], "logprobs": True, "top_logprobs": 2})).json()
        assert runtime.requests[-1].logprobs == 2
        content = answer["choices"][0]["logprobs"]["content"]
        assert [t["token"] for t in content] == ["Par", "is", "."]
        assert content[0] == {"token": "Par", "logprob": -0.25, "bytes": list(b"Par"), "top_logprobs": [
            {"token": "Rome", "logprob": -2.5, "bytes": list(b"Rome")},
            {"token": "Berlin", "logprob": -3.0, "bytes": list(b"Berlin")}]}
        plain = (await client.post(CHAT, json={"messages": [USER], "logprobs": True})).json()
        assert runtime.requests[-1].logprobs == 0
        assert plain["choices"][0]["logprobs"]["content"][2]["top_logprobs"] == []
        assert (await client.post(CHAT, json={"messages": [USER], "logprobs": False})).json()["choices"][0][
            "logprobs"] is None
        assert runtime.requests[-1].logprobs is None

        streamed = events(await client.post(CHAT, json={"messages": [USER], "logprobs": True, "top_logprobs": 1,
                                                        "stream": True}))
        tokens = [t for c in streamed for t in (c["choices"][0]["logprobs"] or {}).get("content", [])]
        assert [(t["token"], t["logprob"]) for t in tokens] == [("Par", -0.25), ("is", -0.5), (".", -0.75)]
        assert all(len(t["top_logprobs"]) == 1 for t in tokens)

    serve(runtime, check)


def test_tool_calls_in_openai_shapes():
    runtime = Scripted()
    body = {"messages": [USER], "tools": [TOOL], "tool_choice": "required"}

    async def check(client):
        answer = (await client.post(CHAT, json=body)).json()
        assert runtime.requests[-1].tools.choice == "required"
        choice = answer["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"] == {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "capital", "arguments": '{"country": "France"}'}}]}

        streamed = events(await client.post(CHAT, json={**body, "stream": True}))
        deltas = [c["choices"][0] for c in streamed]
        calls = [d["delta"]["tool_calls"] for d in deltas if "tool_calls" in d["delta"]]
        assert calls == [[{"index": 0, "id": "call_1", "type": "function",
                           "function": {"name": "capital", "arguments": '{"country": "France"}'}}]]
        assert deltas[-1] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}

        none = (await client.post(CHAT, json={**body, "tool_choice": "none"})).json()
        assert none["choices"][0]["message"] == {"role": "assistant", "content": "Paris."}

    serve(runtime, check)


def test_completions_in_the_legacy_shape():
    runtime = Scripted()

    async def check(client):
        answer = (await client.post("/v1/completions", json={"prompt": "The capital of France is", "logprobs": 1,
                                                              "n": 2})).json()
        assert runtime.requests[-1].prompt == "The capital of France is" and runtime.requests[-1].messages == []
        assert runtime.requests[-1].max_new_tokens == 16  # OpenAI's default, not the chat default of 7
        assert answer["object"] == "text_completion" and answer["id"].startswith("cmpl-")
        assert [c["text"] for c in answer["choices"]] == ["Paris.", "Paris."]
        assert answer["choices"][0]["logprobs"] == {
            "tokens": ["Par", "is", "."], "token_logprobs": [-0.25, -0.5, -0.75],
            "top_logprobs": [{"Rome": -2.5}] * 3, "text_offset": [0, 3, 5]}
        assert answer["usage"] == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}

        streamed = events(await client.post("/v1/completions", json={"prompt": ["Hi"], "stream": True, "logprobs": 0,
                                                                     "stream_options": {"include_usage": True}}))
        assert all(c["object"] == "text_completion" for c in streamed)
        choices = [c["choices"][0] for c in streamed if c["choices"]]
        assert "".join(c["text"] for c in choices) == "Paris."
        assert [o for c in choices if c["logprobs"] for o in c["logprobs"]["text_offset"]] == [0, 3, 5]
        assert choices[-1]["finish_reason"] == "stop" and streamed[-1]["usage"]["total_tokens"] == 8

    serve(runtime, check)


def test_models_and_every_v1_error_in_openai_shape():
    runtime = Scripted(refuse=lambda request: bool(request.sampling.logit_bias) or request.sampling.seed == 666)

    async def check(client):
        card = (await client.get("/v1/models/tiny")).json()
        assert card["id"] == "tiny" and card["object"] == "model" and card["created"] > 0
        assert (await client.get("/v1/models")).json()["data"] == [card]

        def openai_error(response, status, param=None):
            assert response.status_code == status, response.text
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
            assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
            return error

        openai_error(await client.get("/v1/models/gpt-4"), 404, "model")
        openai_error(await client.post(CHAT, json={"messages": [USER], "audio": {"voice": "alloy"}}), 400, "audio")
        openai_error(await client.post("/v1/completions", json={"prompt": [1, 2]}), 400, "prompt")
        openai_error(await client.post(CHAT, content=b"{nope"), 400)
        openai_error(await client.get("/v1/embeddings"), 404)
        openai_error(await client.get(CHAT), 405)
        # a value only the runtime can judge (a token id past the vocabulary) is a 400, on every route
        biased = {"messages": [USER], "logit_bias": {"99999": 5}}
        assert "vocabulary" in openai_error(await client.post(CHAT, json=biased), 400)["message"]
        assert (await client.post(CHAT, json={**biased, "stream": True})).status_code == 400
        # values that would overflow the sampler are the contract's 400s, never a runtime's 5xx
        for hostile, param in (({"frequency_penalty": 1e308}, "frequency_penalty"), ({"seed": 2**64}, "seed"),
                               ({"presence_penalty": -3}, "presence_penalty"),
                               ({"logit_bias": {"5": 1e6}}, "logit_bias.5")):
            for route, body in ((CHAT, {"messages": [USER]}), ("/v1/completions", {"prompt": "Hi"})):
                openai_error(await client.post(route, json={**body, **hostile}), 400, param)
        score = await client.post("/score", json={"input_data": {"input_string": [USER]}, "params": {"foo": 1}})
        assert score.status_code == 400 and score.json()["field"] == "params.foo"  # /score keeps its shape
        refused = await client.post("/score", json={"input_data": {"input_string": [USER]}, "params": {"seed": 666}})
        assert refused.status_code == 400 and refused.json()["error"] == "InvalidInput"
        assert "vocabulary" in refused.json()["message"]

    serve(runtime, check)


def test_a_refused_choice_lets_the_queued_ones_go():
    """Streamed or not, every choice is queued before any is read: one refused (a full queue, a value the model
    cannot take) lets the queued ones go instead of leaving them generating to max_tokens."""
    runtime = Scripted(refuse=lambda request: request.sampling.seed == 2)

    async def check(client):
        for stream in (True, False):
            runtime.requests.clear()
            runtime.cancelled = 0
            refused = await client.post(CHAT, json={"messages": [USER], "n": 3, "seed": 1, "stream": stream})
            assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_request_error"
            assert [r.sampling.seed for r in runtime.requests] == [1] and runtime.cancelled == 1, stream

    serve(runtime, check)


class FailingStream(ScriptedStream):
    """Its first token, then the runtime fails."""

    def __iter__(self):
        yield next(super().__iter__())
        raise RuntimeError("the device fell over")


class Failing(Scripted):
    """A runtime whose stream for seed 2 fails after its first token."""

    def stream(self, request):
        if request.sampling.seed != 2:
            return super().stream(request)
        self.requests.append(request)
        return FailingStream(self, request)


def test_a_choice_failing_mid_way_lets_the_others_go():
    runtime = Failing()

    async def check(client):
        failed = await client.post(CHAT, json={"messages": [USER], "n": 3, "seed": 1})
        assert failed.status_code == 500 and "the device fell over" in failed.json()["error"]["message"]
        assert runtime.cancelled >= 3  # every choice's sequence is let go

    serve(runtime, check)


def test_a_failed_stream_ends_with_an_error_event_and_no_done():
    """ARCHITECTURE: a failed stream ends with an error event and no [DONE], so no client takes the part it got for
    the whole answer."""
    runtime = Failing()

    async def check(client):
        answer = await client.post(CHAT, json={"messages": [USER], "seed": 2, "stream": True})
        assert answer.status_code == 200
        blocks = [b for b in answer.text.split("\n\n") if b]
        assert "[DONE]" not in answer.text and not any(b.startswith(":") for b in blocks)
        error = json.loads(blocks[-1].removeprefix("data: "))["error"]
        assert error["type"] == "server_error" and "the device fell over" in error["message"]
        assert json.loads(blocks[1].removeprefix("data: "))["choices"][0]["delta"] == {"content": "seed2"}

    serve(runtime, check)


def test_unpaired_surrogates_are_400_on_every_route():
    """JSON's escapes can write a lone UTF-16 surrogate, which is no Unicode: as a key (quoted by the error), the
    model name (echoed in the answer) or a prompt (given to the tokenizer) it is a 400, not a 500."""
    runtime = Scripted()
    content = '{"role": "user", "content": "hi"}'
    bodies = {CHAT: ['{"messages": [%s], "\\ud800": 1}' % content,
                     '{"messages": [%s], "model": "\\ud800"}' % content,
                     '{"messages": [{"role": "user", "content": "hi \\udfff"}], "stream": true}'],
              "/v1/completions": ['{"prompt": "\\ud800"}'],
              "/score": ['{"input_data": {"input_string": [{"role": "user", "content": "\\ud800"}]}}']}

    async def check(client):
        for path, raws in bodies.items():
            for raw in raws:
                answer = await client.post(path, content=raw.encode(), headers={"content-type": "application/json"})
                assert answer.status_code == 400, (path, raw, answer.text)
                message = answer.json()["error"]["message"] if path != "/score" else answer.json()["message"]
                assert "send valid Unicode" in message
        assert runtime.requests == []
        fine = await client.post(CHAT, content=('{"messages": [%s], "model": "\\ud83d\\ude00"}' % content).encode())
        assert fine.status_code == 200 and fine.json()["model"] == "\U0001F600"  # a paired surrogate is an emoji

    serve(runtime, check)


def test_a_runtime_that_drops_asked_logprobs_is_a_server_error():
    class ForgetfulStream(ScriptedStream):
        def run(self):
            result = super().run()
            return GenerationResult(result.text, result.prompt_tokens, result.completion_tokens, "stop")

    class Forgetful(Scripted):
        def stream(self, request):
            self.requests.append(request)
            return ForgetfulStream(self, request)

    async def check(client):
        answer = await client.post(CHAT, json={"messages": [USER], "logprobs": True})
        assert answer.status_code == 500 and answer.json()["error"]["type"] == "server_error"

    serve(Forgetful(), check)


class Held(Scripted):
    """A runtime whose streams give "Par", then hold their next token until they are cancelled; the stream of
    seed `fails` raises after its "Par" instead."""

    def __init__(self, fails: int | None = None) -> None:
        super().__init__()
        self.fails = fails
        self.ended = threading.Semaphore(0)  # released once for each stream its reader let go

    def stream(self, request):
        runtime, let_go = self, threading.Event()
        fails = request.sampling.seed is not None and request.sampling.seed == self.fails

        class Stream(ScriptedStream):
            def __iter__(self):
                try:
                    yield StreamEvent("Par")
                    if fails:
                        raise RuntimeError("the device fell over")
                    assert let_go.wait(10), "the stream was never cancelled"
                finally:
                    runtime.ended.release()

            def cancel(self):
                runtime.cancelled += 1
                let_go.set()

        self.requests.append(request)
        return Stream(self, request)


def leave_after_first_token(app, body: dict) -> tuple[bytes, int]:
    """POST a streaming chat to the app as a client that goes away once the first token has come: what it got, and
    how many slots of the worker-thread pool were taken while it streamed."""
    asked, first, sent, taken = False, asyncio.Event(), [], []

    async def receive():
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await first.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.body":
            sent.append(message.get("body", b""))
            if b'"Par"' in message.get("body", b"") and not first.is_set():
                taken.append(anyio.to_thread.current_default_thread_limiter().borrowed_tokens)
                first.set()

    async def main():
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model") as client:
                while (await client.get("/health")).status_code != 200:
                    await asyncio.sleep(0.01)
            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                     "scheme": "http", "path": CHAT, "raw_path": CHAT.encode(), "query_string": b"", "root_path": "",
                     "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 40000),
                     "server": ("127.0.0.1", 8765)}
            await asyncio.wait_for(app(scope, receive, send), 10)
            return b"".join(sent), taken[0]

    return asyncio.run(main())


@pytest.mark.parametrize("n", [1, 3])
def test_a_client_leaving_mid_stream_cancels_its_sequences_and_ends_their_readers(n):
    runtime = Held()
    app = create_app(lambda: runtime, name="tiny", default_max_new_tokens=7)
    got, pool_slots = leave_after_first_token(app, {"messages": [USER], "stream": True, "n": n})
    assert b'"Par"' in got and b"[DONE]" not in got
    assert pool_slots == 0  # a stream's reader is a thread of its own, not one the other requests wait on
    assert runtime.cancelled >= n
    assert all(runtime.ended.acquire(timeout=5) for _ in range(n))  # every reading thread let its stream go


def test_a_choice_failing_mid_stream_ends_the_answer_at_once_and_lets_the_others_go():
    runtime = Held(fails=2)

    async def check(client):  # the other choices hold their next token for 10 s unless cancelled
        answer = await asyncio.wait_for(client.post(CHAT, json={"messages": [USER], "n": 3, "seed": 1,
                                                                "stream": True}), 5)
        assert answer.status_code == 200 and "[DONE]" not in answer.text
        error = json.loads(answer.text.strip().split("\n\n")[-1].removeprefix("data: "))["error"]
        assert error["type"] == "server_error" and "the device fell over" in error["message"]
        assert runtime.cancelled >= 3 and all(runtime.ended.acquire(timeout=5) for _ in range(3))

    serve(runtime, check)


def test_a_reader_that_cannot_start_ends_the_stream_with_an_error_and_lets_the_others_go(monkeypatch):
    """A stream's reading thread that fails to start is the answer's failure, reported in-band, never a client
    left waiting; the streams whose readers started are cancelled, and those readers end."""
    runtime, started = Held(), []

    class SecondFails(threading.Thread):
        def start(self):
            if started:
                raise RuntimeError("can't start new thread")
            started.append(self)
            super().start()

    monkeypatch.setattr(openai_server, "threading", types.SimpleNamespace(Thread=SecondFails))

    async def check(client):
        answer = await asyncio.wait_for(client.post(CHAT, json={"messages": [USER], "n": 2, "stream": True}), 5)
        assert answer.status_code == 200 and "[DONE]" not in answer.text
        error = json.loads(answer.text.strip().split("\n\n")[-1].removeprefix("data: "))["error"]
        assert error["type"] == "server_error" and "can't start new thread" in error["message"]
        assert len(started) == 1 and runtime.cancelled >= 2 and runtime.ended.acquire(timeout=5)

    serve(runtime, check)
