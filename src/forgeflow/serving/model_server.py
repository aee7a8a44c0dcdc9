"""One model-server process: a model loaded once, answering the Azure /score contract and OpenAI chat.

    python -m forgeflow.serving.model_server --model-dir DIR --port P [--host 127.0.0.1] [--name NAME]

It listens on loopback only; the gateway in front of it does auth, traffic and limits. The model
loads in the background: /health answers 503 "loading" until it is ready, and the process prints
`READY <port>` on stdout once the model is loaded and the socket is listening.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from forgeflow.errors import ForgeflowError, InvalidInput, ServerUnavailable, UpstreamError
from forgeflow.serving.scoring import parse_chat_completion_request, parse_score_request


class Generator(Protocol):
    def generate(self, messages: Any, **kwargs: Any) -> Any: ...


class _State:
    def __init__(self) -> None:
        self.generator: Generator | None = None
        self.error: str | None = None
        self.task: asyncio.Task | None = None


def create_app(
    generator_factory: Callable[[], Generator],
    *,
    name: str = "default",
    default_max_new_tokens: int = 256,
    on_loaded: Callable[[], None] | None = None,
    on_failed: Callable[[str], None] | None = None,
) -> FastAPI:
    """The model-server app; generator_factory runs once, in a worker thread, at startup."""
    state = _State()

    async def load() -> None:
        try:
            state.generator = await run_in_threadpool(generator_factory)
        except Exception as exc:
            state.error = f"{type(exc).__name__}: {exc}"
            if on_failed:
                on_failed(state.error)
            return
        if on_loaded:
            on_loaded()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        state.task = asyncio.create_task(load())
        yield
        if not state.task.done():
            state.task.cancel()

    app = FastAPI(title=f"forgeflow model server ({name})", lifespan=lifespan)
    app.state.model = state

    def ready() -> Generator:
        if state.generator is not None:
            return state.generator
        if state.error:
            raise UpstreamError(f"the model failed to load: {state.error}")
        raise ServerUnavailable("the model is still loading; retry when /health answers ready")

    async def read_json(request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw)
        except ValueError:
            raise InvalidInput("the request body must be valid JSON") from None

    async def run(generator: Generator, messages: list, kwargs: dict) -> Any:
        try:
            return await run_in_threadpool(generator.generate, messages, **kwargs)
        except ForgeflowError:
            raise
        except Exception as exc:
            raise _GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}") from exc

    @app.exception_handler(ForgeflowError)
    async def forgeflow_error(_request: Request, exc: ForgeflowError) -> JSONResponse:
        body = {"error": type(exc).__name__, "message": exc.message, "field": exc.field}
        if isinstance(exc, _GenerationFailed):
            body["error"] = "UpstreamError"
        return JSONResponse(body, status_code=exc.status_code)

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.generator is not None:
            return JSONResponse({"status": "ready", "name": name})
        if state.error:
            return JSONResponse({"status": "failed", "name": name, "message": state.error}, status_code=503)
        return JSONResponse({"status": "loading", "name": name}, status_code=503)

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        body = parse_score_request(await read_json(request))
        generator = ready()
        result = await run(generator, body.messages, body.generation_kwargs(default_max_new_tokens=default_max_new_tokens))
        return JSONResponse({"output": result.text}, headers=_usage_headers(result))

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "forgeflow"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        body = parse_chat_completion_request(await read_json(request))
        if body.stream:
            raise InvalidInput("stream: streaming is served by the forgeflow gateway, not the model server",
                               field="stream")
        generator = ready()
        result = await run(generator, body.chat, body.generation_kwargs(default_max_new_tokens=default_max_new_tokens))
        answer = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.model or name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": result.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "total_tokens": result.prompt_tokens + result.completion_tokens,
            },
        }
        return JSONResponse(answer, headers=_usage_headers(result))

    return app


class _GenerationFailed(ForgeflowError):
    status_code = 500


def _usage_headers(result: Any) -> dict[str, str]:
    return {
        "x-forgeflow-prompt-tokens": str(result.prompt_tokens),
        "x-forgeflow-completion-tokens": str(result.completion_tokens),
        "x-forgeflow-finish-reason": str(result.finish_reason),
    }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m forgeflow.serving.model_server", description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", required=True, type=Path, help="HF model folder or MLflow model folder")
    parser.add_argument("--port", required=True, type=int, help="port to listen on")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (loopback by default)")
    parser.add_argument("--name", default=None, help="deployment name reported by /health and /v1/models")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="default when a request sets none")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from forgeflow.serving.generation import ChatGenerator

    args = _parse_args(argv)
    failure: list[str] = []
    server: uvicorn.Server | None = None
    # Listening before uvicorn starts means that once READY is printed, connections are queued, not refused.
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    port = sock.getsockname()[1]

    def loaded() -> None:
        print(f"READY {port}", flush=True)

    def failed(message: str) -> None:
        failure.append(message)
        print(f"model server: the model failed to load: {message}", file=sys.stderr, flush=True)
        if server is not None:
            server.should_exit = True

    app = create_app(
        lambda: ChatGenerator(args.model_dir, device=args.device),
        name=args.name or args.model_dir.name,
        default_max_new_tokens=args.max_new_tokens,
        on_loaded=loaded,
        on_failed=failed,
    )
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
