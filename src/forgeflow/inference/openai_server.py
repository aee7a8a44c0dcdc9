"""The OpenAI surface of a model instance: POST /v1/chat/completions and /v1/completions (with `n` choices,
log-probabilities, tool calls, streaming), GET /v1/models and /v1/models/{id}, and OpenAI's error shape
`{"error": {"message", "type", "param", "code"}}` for every error on a /v1 path. On an instance serving several
fine-tunes of one base, a request's `model` (else the `x-forgeflow-model` header the gateway forwards) picks
the LoRA adapter (inference/adapters.py), the answer's `model` names it, and /v1/models lists each adapter by
its NAME:VERSION after the deployment's own card.

Each choice of `n` is its own sequence in the runtime, all queued before the answer starts (so a request the
runtime refuses is still a 400, and a refused choice lets the queued ones go) and decoded together. Streams
interleave the choices' chunks by `index`; a choice's tool calls come as one `tool_calls` delta after its text,
then its `finish_reason`. A stream that fails after its first chunk ends with an error event and no `[DONE]`;
one that does not ask for the usage chunk ends with the usage comment its gateway reads for the token metrics.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
import uuid
from contextlib import aclosing
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from forgeflow import jsonbody
from forgeflow.chat import (ChatCompletionRequest, ChatRequest, CompletionRequest, error_event,
                            parse_chat_completion_request, parse_completion_request, usage_comment)
from forgeflow.errors import ForgeflowError, InternalError, NotFound, UpstreamError
from forgeflow.inference.adapters import MODEL_HEADER, AdapterCatalog
from forgeflow.inference.runtimes.base import GenerationResult, Runtime, StreamEvent, TokenLogprob, TokenStream

# Calls a runtime's function with one argument (a request, or a queued stream to read to its end) in a worker
# thread, turning its failures into ForgeflowErrors.
Run = Callable[[Callable[[Any], Any], Any], Awaitable[Any]]
CLIENT_LEFT = 499  # the answer to a request whose client hung up before it was ready (no one reads it)


class OpenAIServing:
    """Answers the OpenAI routes for one loaded model. `ready` returns the runtime (or raises while it loads);
    `run` calls the runtime in a worker thread, turning its failures into ForgeflowErrors."""

    def __init__(self, *, name: str, ready: Callable[[], Runtime], run: Run, default_max_new_tokens: int,
                 catalog: AdapterCatalog | None = None) -> None:
        self.name = name
        self.ready = ready
        self.run = run
        self.default_max_new_tokens = default_max_new_tokens
        self.catalog = catalog or AdapterCatalog()
        self.created = int(time.time())

    def model_cards(self) -> list[dict[str, Any]]:
        """The deployment (its default model), then each adapter it serves by its NAME:VERSION."""
        card = {"id": self.name, "object": "model", "created": self.created, "owned_by": "forgeflow"}
        return [card] + [{**card, "id": name, "parent": self.name} for name in self.catalog.names]

    async def answer(self, body: ChatCompletionRequest | CompletionRequest, named: str | None = None,
                     request: Request | None = None) -> Any:
        """The answer to one request; its `model`, else the MODEL_HEADER the gateway forwards (`named`), picks
        the adapter. A non-streamed answer whose client (`request`) hangs up first is not finished."""
        # a served name's other version: 404; an ambiguous name: 400
        adapter = self.catalog.resolve(body.model or named)
        runtime = self.ready()
        requests = body.to_requests(default_max_new_tokens=self.default_max_new_tokens)
        shape = _Chat(body) if isinstance(body, ChatCompletionRequest) else _Text(body)
        model = adapter or body.model or self.name
        stream = runtime_call(runtime.stream, adapter)
        if body.stream:
            streams = await self._queued(stream, requests)
            return StreamingResponse(
                _sse(shape, model, streams, body.include_usage), media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no",
                         "x-forgeflow-prompt-tokens": str(streams[0].prompt_tokens)})
        results = await read_unless_left(self.run, await self._queued(stream, requests), request)
        if results is None:
            return Response(status_code=CLIENT_LEFT)
        answer = {"id": shape.id(), "object": shape.object, "created": int(time.time()), "model": model,
                  "choices": [shape.choice(i, result) for i, result in enumerate(results)],
                  "usage": _usage(results)}
        return JSONResponse(answer, headers=usage_headers(results))

    async def _queued(self, stream: Callable[[ChatRequest], TokenStream],
                      requests: Sequence[ChatRequest]) -> list[TokenStream]:
        """Every choice queued in the runtime, or none: a refusal cancels those already queued."""
        streams: list[TokenStream] = []
        try:
            for request in requests:
                streams.append(await self.run(stream, request))
        except BaseException:
            for stream in streams:
                stream.cancel()
            raise
        return streams


async def read_unless_left(run: Run, streams: Sequence[TokenStream],
                           request: Request | None) -> list[GenerationResult] | None:
    """Each queued stream read to its end in a worker thread, or None once the client of `request` hangs up
    first: no one waits for a non-streamed answer then (the gateway closes its connection to the instance when
    its own client leaves or its request times out), so its sequences leave the runtime at their next step rather
    than decode to their last token. Every stream ends cancelled (a no-op for a finished one; a failed choice
    lets the others go)."""
    reading = asyncio.ensure_future(asyncio.gather(*(run(_read, s) for s in streams)))
    left = asyncio.ensure_future(_hung_up(request)) if request is not None else None
    try:
        if left is not None:
            await asyncio.wait((reading, left), return_when=asyncio.FIRST_COMPLETED)
        if left is None or reading.done():
            return list(await reading)
        return None
    finally:
        if left is not None:
            left.cancel()
        for stream in streams:
            stream.cancel()
        if not reading.done():  # the client left: the readers end at their streams' next step
            await asyncio.gather(reading, return_exceptions=True)


async def _hung_up(request: Request) -> None:
    """Returns once the client of `request`, whose body has been read, disconnects."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def openai_router(serving: OpenAIServing) -> APIRouter:
    """The /v1 routes of a model instance."""
    router = APIRouter()

    @router.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": serving.model_cards()}

    @router.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        cards = {card["id"]: card for card in serving.model_cards()}
        model_id = serving.catalog.match(model_id) or model_id  # `tuned-a`: its one version served
        if model_id not in cards:
            raise NotFound(f"this instance serves {', '.join(cards)}, not {model_id!r}", field="model")
        return cards[model_id]

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await serving.answer(parse_chat_completion_request(jsonbody.loads(await request.body())),
                                    request.headers.get(MODEL_HEADER), request)

    @router.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await serving.answer(parse_completion_request(jsonbody.loads(await request.body())),
                                    request.headers.get(MODEL_HEADER), request)

    return router


# -- the shapes of the two answers --------------------------------------------------------------------------


class _Chat:
    """chat.completion objects: a message per choice, logprobs as `{"content": [...]}`."""

    object = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def __init__(self, body: ChatCompletionRequest) -> None:
        self.logprobs = body.logprobs

    @staticmethod
    def id() -> str:
        return f"chatcmpl-{uuid.uuid4().hex}"

    def choice(self, index: int, result: GenerationResult) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": result.text}
        if result.tool_calls:
            message["content"] = result.text or None
            message["tool_calls"] = [_tool_call(call) for call in result.tool_calls]
        return {"index": index, "message": message, "logprobs": self._logprobs(_logprobs_of(result, self.logprobs)),
                "finish_reason": result.finish_reason}

    def opening(self, index: int) -> dict[str, Any] | None:
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}

    def delta(self, index: int, event: StreamEvent, _offset: int) -> dict[str, Any]:
        return {"index": index, "delta": {"content": event.text} if event.text else {},
                "logprobs": self._logprobs(event.logprobs), "finish_reason": None}

    def closing(self, index: int, result: GenerationResult) -> list[dict[str, Any]]:
        last = []
        if result.tool_calls:
            calls = [{"index": i, **_tool_call(call)} for i, call in enumerate(result.tool_calls)]
            last.append({"index": index, "delta": {"tool_calls": calls}, "logprobs": None, "finish_reason": None})
        last.append({"index": index, "delta": {}, "logprobs": None, "finish_reason": result.finish_reason})
        return last

    def _logprobs(self, tokens: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        return {"content": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes),
                             "top_logprobs": [{"token": alt, "logprob": lp, "bytes": list(alt.encode())}
                                              for alt, lp in t.top]} for t in tokens or ()],
                "refusal": None}


class _Text:
    """text_completion objects: text per choice, logprobs in the legacy shape (tokens, token_logprobs,
    top_logprobs, text_offset)."""

    object = "text_completion"
    chunk_object = "text_completion"

    def __init__(self, body: CompletionRequest) -> None:
        self.logprobs = body.logprobs is not None

    @staticmethod
    def id() -> str:
        return f"cmpl-{uuid.uuid4().hex}"

    def choice(self, index: int, result: GenerationResult) -> dict[str, Any]:
        return {"index": index, "text": result.text, "finish_reason": result.finish_reason,
                "logprobs": self._logprobs(_logprobs_of(result, self.logprobs), 0)}

    def opening(self, index: int) -> None:
        return None

    def delta(self, index: int, event: StreamEvent, offset: int) -> dict[str, Any]:
        return {"index": index, "text": event.text, "logprobs": self._logprobs(event.logprobs, offset),
                "finish_reason": None}

    def closing(self, index: int, result: GenerationResult) -> list[dict[str, Any]]:
        return [{"index": index, "text": "", "logprobs": None, "finish_reason": result.finish_reason}]

    def _logprobs(self, tokens: Sequence[TokenLogprob] | None, offset: int) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        tokens = tokens or ()
        offsets = []
        for t in tokens:
            offsets.append(offset)
            offset += len(t.token)
        return {"tokens": [t.token for t in tokens], "token_logprobs": [t.logprob for t in tokens],
                "top_logprobs": [dict(t.top) for t in tokens], "text_offset": offsets}


def runtime_call(call: Callable[..., Any], adapter: str | None) -> Callable[[ChatRequest], Any]:
    """A runtime's `stream` or `generate` bound to the adapter a request picked (None: the model itself)."""
    return call if adapter is None else functools.partial(call, adapter=adapter)


def _logprobs_of(result: GenerationResult, asked: bool | None) -> tuple[TokenLogprob, ...] | None:
    if asked and result.logprobs is None:
        raise InternalError("the runtime answered without the log-probabilities the request asked for")
    return result.logprobs


def _tool_call(call: Any) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _usage(results: Sequence[GenerationResult]) -> dict[str, int]:
    """The prompt counts once (every choice reads the same one); the completions add up."""
    prompt, completion = results[0].prompt_tokens, sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _read(stream: TokenStream) -> GenerationResult:
    return stream.run()


def usage_headers(results: Sequence[GenerationResult]) -> dict[str, str]:
    """The token counts and finish reason of an answer, for the gateway's metrics."""
    usage = _usage(results)
    return {"x-forgeflow-prompt-tokens": str(usage["prompt_tokens"]),
            "x-forgeflow-completion-tokens": str(usage["completion_tokens"]),
            "x-forgeflow-finish-reason": str(results[0].finish_reason)}


# -- streaming -------------------------------------------------------------------------------------------------


async def _sse(shape: _Chat | _Text, model: str, streams: list[TokenStream],
               include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events for the choices' streams, interleaved as their tokens come, ending `data: [DONE]`.
    A failure after the first event is reported in-band, as OpenAI does (the status is already sent), and the
    stream then ends without `[DONE]`, so the answer does not look complete."""
    base = {"id": shape.id(), "object": shape.chunk_object, "created": int(time.time()), "model": model}
    extra = {"usage": None} if include_usage else {}

    def event(choice: dict[str, Any]) -> str:
        return f"data: {json.dumps({**base, 'choices': [choice], **extra})}\n\n"

    results: list[GenerationResult | None] = [None] * len(streams)
    offsets = [0] * len(streams)
    try:
        for index in range(len(streams)):
            opening = shape.opening(index)
            if opening:
                yield event(opening)
        async with aclosing(_interleaved(streams)) as steps:
            async for index, step in steps:
                if step.text or step.logprobs:
                    yield event(shape.delta(index, step, offsets[index]))
                    offsets[index] += len(step.text)
                if step.result is not None:
                    results[index] = step.result
                    for closing in shape.closing(index, step.result):
                        yield event(closing)
        done = [r for r in results if r is not None]
        if len(done) < len(streams):
            raise RuntimeError("the runtime ended a stream without a result")
        if include_usage:
            yield f"data: {json.dumps({**base, 'choices': [], 'usage': _usage(done)})}\n\n"
        else:
            yield usage_comment(_usage(done))
    except Exception as exc:  # headers are sent: report in-band, as OpenAI does
        message = exc.message if isinstance(exc, ForgeflowError) else f"{type(exc).__name__}: {exc}"
        yield error_event(UpstreamError(f"generation failed: {message}"))
        return
    finally:
        for stream in streams:
            stream.cancel()  # the client may have gone: free the sequences
    yield "data: [DONE]\n\n"


async def _interleaved(streams: list[TokenStream]) -> AsyncIterator[tuple[int, StreamEvent]]:
    """(choice index, event) pairs from every stream, in the order they arrive. Each stream is read to its end by
    a thread of its own, which hands each event to the event loop as it comes: a thread per stream, not a
    worker-thread hop per token (that hop cost the loop a third of its time), and no slot of the thread pool the
    other requests wait on. A stream that fails, or whose thread cannot start, raises here; leaving early cancels
    the streams (`_sse`), which ends their readers."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, StreamEvent | None, Exception | None]] = asyncio.Queue()

    def hand(item: tuple[int, StreamEvent | None, Exception | None]) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except Exception:  # the loop has closed: nobody reads this stream any more
            pass

    def read(index: int, stream: TokenStream) -> None:
        try:
            for step in stream:
                hand((index, step, None))
        except Exception as exc:
            hand((index, None, exc))
        except BaseException as exc:  # whatever ends it, the loop hears of it as a failure (else it would wait
            # for ever), and not as its own cancellation or exit
            hand((index, None, RuntimeError(f"the stream's reader ended with {type(exc).__name__}: {exc}")))
        else:
            hand((index, None, None))

    for index, stream in enumerate(streams):  # a thread that cannot start raises here, before anything waits
        threading.Thread(target=read, args=(index, stream), name="forgeflow-stream", daemon=True).start()
    running = len(streams)
    while running:
        index, step, failure = await queue.get()
        if failure is not None:
            raise failure
        if step is None:
            running -= 1
            continue
        yield index, step
