"""One model-server process: a model loaded once, answering the Azure /score contract and OpenAI's API.

    python -m forgeflow.inference.model_server --model-dir DIR --port P [--host 127.0.0.1] [--name NAME]
        [--runtime transformers|llamacpp] [--max-batch-size 8] [--max-queue 64] [--gguf-type f16|q8_0|q4_k_m]
        [--adapter NAME:VERSION=PATH ...] [--max-adapters 8] [--no-prefix-cache]

With `--adapter` (one per registered fine-tune) --model-dir is their base model, loaded once, and a request picks
its LoRA adapter by its `model`, else (on any route, /score always) by the `x-forgeflow-model` header the gateway forwards (the first
adapter when it names none of them; inference/adapters.py).

It listens on loopback only and answers only its gateway, which does endpoint auth, traffic and limits:
every request needs the secret the placement passed in FORGEFLOW_INSTANCE_SECRET (as a bearer token),
a Host header naming the instance's address, and a body within --max-body-bytes (`instance_guard`).
It exits when the server that started it is gone (its lifeline pipe closes). The model
loads in the background: /health answers 503 "loading" until it is ready, and the process prints
`READY <port>` on stdout once the model is loaded and the socket is listening. A model that fails to load, or a
runtime that stops serving later (`Runtime.failure`: its worker stopped, as when its context cannot decode one
token after a failed step), makes /health answer 503 "failed" and the process exit with 1, saying why on stderr,
so its supervisor replaces the instance.

The OpenAI routes (/v1/chat/completions, /v1/completions, /v1/models) are `openai_server`'s; every
error on a /v1 path has OpenAI's shape, on /score forgeflow's `{"error", "message", "field"}`. A runtime
that refuses a request's value (a ValueError) answers 400, not 500. GET /stats reports the runtime's queue (and
its adapters' loads and evictions, as the runtime reports them).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from forgeflow import jsonbody
from forgeflow.chat import DEFAULT_MAX_NEW_TOKENS, openai_error, parse_score_request
from forgeflow.errors import ForgeflowError, InternalError, InvalidInput, NotFound, ServerUnavailable, UpstreamError
from forgeflow.inference.adapters import DEFAULT_MAX_LOADED, MODEL_HEADER, AdapterCatalog, parse_adapter_arg
from forgeflow.inference.gguf_export import GGUF_TYPES
from forgeflow.inference.instance_guard import DEFAULT_MAX_BODY_BYTES, InstanceGuard, allowed_hosts
from forgeflow.inference.openai_server import (CLIENT_LEFT, OpenAIServing, openai_router, read_unless_left,
                                               runtime_call, usage_headers)
from forgeflow.inference.runtimes.base import Runtime
from forgeflow.processes import INSTANCE_SECRET_ENV, exit_with_parent, take_instance_secret

FAILURE_CHECK_S = 0.5  # how often a loaded runtime is asked whether it still serves (Runtime.failure)


class _State:
    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        self.error: str | None = None  # why the model failed to load
        self.stopped: str | None = None  # why the loaded runtime stopped serving (the server is exiting)
        self.task: asyncio.Task | None = None


def create_app(
    runtime_factory: Callable[[], Runtime],
    *,
    name: str = "default",
    default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    on_loaded: Callable[[], None] | None = None,
    on_failed: Callable[[str], None] | None = None,
    catalog: AdapterCatalog | None = None,
) -> FastAPI:
    """The model-server app; runtime_factory runs once, in a worker thread, at startup. Each body is
    parsed once, here, and the runtime gets the typed request. `catalog`: the adapters the runtime was loaded
    with, which requests pick from."""
    state = _State()
    catalog = catalog or AdapterCatalog()

    async def load() -> None:
        try:
            runtime = await run_in_threadpool(runtime_factory)
        except Exception as exc:
            state.error = f"{type(exc).__name__}: {exc}"
            if on_failed:
                on_failed(f"the model failed to load: {state.error}")
            return
        state.runtime = runtime
        if on_loaded:
            on_loaded()
        while runtime.failure is None:  # a runtime whose worker stopped answers nothing more: say so, and exit
            await asyncio.sleep(FAILURE_CHECK_S)
        state.runtime, state.stopped = None, runtime.failure
        if on_failed:
            on_failed(f"the model stopped serving: {runtime.failure}")

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        import anyio.to_thread

        # every request waiting on the runtime holds a worker thread; allow more than the 40 default
        anyio.to_thread.current_default_thread_limiter().total_tokens = 256
        state.task = asyncio.create_task(load())
        yield
        if not state.task.done():
            state.task.cancel()

    app = FastAPI(title=f"forgeflow model server ({name})", lifespan=lifespan)
    app.state.model = state

    def ready() -> Runtime:
        if state.runtime is not None:
            return state.runtime
        if state.stopped:
            raise ServerUnavailable(f"{state.stopped}; retry on another instance")
        if state.error:
            raise UpstreamError(f"the model failed to load: {state.error}")
        raise ServerUnavailable("the model is still loading; retry when /health answers ready")

    async def read_json(request: Request) -> Any:
        return jsonbody.loads(await request.body())

    def error_body(request: Request, exc: ForgeflowError) -> dict[str, Any]:
        """OpenAI's shape on its paths, forgeflow's elsewhere (/score keeps its contract)."""
        if request.url.path.startswith("/v1/"):
            return openai_error(exc)
        body = {"error": type(exc).__name__, "message": exc.message, "field": exc.field}
        if isinstance(exc, _GenerationFailed):
            body["error"] = "UpstreamError"
        return body

    @app.exception_handler(ForgeflowError)
    async def forgeflow_error(request: Request, exc: ForgeflowError) -> JSONResponse:
        return JSONResponse(error_body(request, exc), status_code=exc.status_code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """A path or method the instance does not serve, in the shape of the path's API."""
        kind = NotFound if exc.status_code == 404 else ForgeflowError
        error = kind(f"{request.method} {request.url.path}: {exc.detail}", status_code=exc.status_code)
        return JSONResponse(error_body(request, error), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        error = InternalError(f"the model server failed: {type(exc).__name__}: {exc}")
        return JSONResponse(error_body(request, error), status_code=500)

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.runtime is not None:
            return JSONResponse({"status": "ready", "name": name})
        if state.error or state.stopped:
            return JSONResponse({"status": "failed", "name": name, "message": state.error or state.stopped},
                                status_code=503)
        return JSONResponse({"status": "loading", "name": name}, status_code=503)

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        body = parse_score_request(await read_json(request))
        adapter = catalog.resolve(request.headers.get(MODEL_HEADER))
        runtime = ready()
        stream = await run_generation(runtime_call(runtime.stream, adapter),
                                      body.to_request(default_max_new_tokens=default_max_new_tokens))
        results = await read_unless_left(run_generation, [stream], request)
        if results is None:
            return Response(status_code=CLIENT_LEFT)
        return JSONResponse({"output": results[0].text}, headers=usage_headers(results))

    @app.get("/stats")
    def stats() -> dict:  # on a worker thread: a runtime's health may wait for an adapter that is loading
        runtime = state.runtime
        return {"name": name, "ready": runtime is not None, **({"adapters": catalog.names} if catalog.names else {}),
                **(runtime.health() if runtime else {})}

    app.include_router(openai_router(OpenAIServing(name=name, ready=ready, run=run_generation,
                                                   default_max_new_tokens=default_max_new_tokens, catalog=catalog)))
    return app


async def run_generation(call: Callable[[Any], Any], argument: Any) -> Any:
    """`generate` or `stream` (or the reading of a queued stream) in a worker thread. A ValueError is the runtime
    refusing what the request asks (a token id past the vocabulary, a prompt past the context): a 400; anything
    else not a ForgeflowError is a failed generation."""
    try:
        return await run_in_threadpool(call, argument)
    except ForgeflowError:
        raise
    except ValueError as exc:
        raise InvalidInput(f"the model cannot take this request: {exc}") from exc
    except Exception as exc:
        raise _GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}") from exc


class _GenerationFailed(ForgeflowError):
    status_code = 500


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m forgeflow.inference.model_server", description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", required=True, type=Path, help="HF model folder or MLflow model folder")
    parser.add_argument("--port", required=True, type=int, help="port to listen on")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (loopback by default)")
    parser.add_argument("--name", default=None, help="deployment name reported by /health and /v1/models")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help="default when a request sets none")
    parser.add_argument("--runtime", default="transformers", help="transformers or llamacpp (vllm is planned)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="sequences decoded together")
    parser.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond it get 429")
    parser.add_argument("--gguf-type", default="f16",
                        help=f"llamacpp: GGUF weights, one of {', '.join(GGUF_TYPES)} (made once, kept with the model)")
    parser.add_argument("--threads", type=int, default=None, help="llamacpp: CPU threads (default: FORGEFLOW_LLAMACPP_THREADS, else half the cores)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help="larger request bodies get 413")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME:VERSION=PATH",
                        help="a LoRA adapter (PEFT folder) of the base model in --model-dir; repeat for several, the "
                             "first is the default")
    parser.add_argument("--max-adapters", type=int, default=DEFAULT_MAX_LOADED,
                        help="adapters held loaded at once; the least recently used beyond it are let go")
    parser.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                        help="do not reuse the KV cache of earlier prompts that start the same way")
    return parser.parse_args(argv)


def adapters_of(args: argparse.Namespace) -> dict[str, Path]:
    """The `--adapter` flags as name -> folder, in order; a name given twice is refused."""
    adapters: dict[str, Path] = {}
    for value in args.adapter:
        name, path = parse_adapter_arg(value)
        if name in adapters:
            raise InvalidInput(f"--adapter {name} is given twice", field="adapter")
        adapters[name] = path
    if args.max_adapters < 1:
        raise InvalidInput(f"--max-adapters must be at least 1, got {args.max_adapters}", field="max_adapters")
    if args.max_batch_size < 1:
        raise InvalidInput(f"--max-batch-size must be at least 1, got {args.max_batch_size}", field="max_batch_size")
    return adapters


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from forgeflow.inference.runtimes import load_runtime

    args = _parse_args(argv)
    try:
        catalog = AdapterCatalog(adapters_of(args))
    except ForgeflowError as exc:
        print(f"model server: {exc.message}", file=sys.stderr, flush=True)
        return 2
    exit_with_parent()
    secret = take_instance_secret()
    if not secret:
        print(f"model server: {INSTANCE_SECRET_ENV} is not set: an instance answers only the gateway that started "
              "it, which passes the instance's secret in the environment", file=sys.stderr, flush=True)
        return 2
    failure: list[str] = []
    server: uvicorn.Server | None = None
    # Listening before uvicorn starts means that once READY is printed, connections are queued, not refused.
    # proto IPPROTO_TCP (not 0): asyncio then sets TCP_NODELAY on accepted connections; without it a
    # response written as headers then body waits ~40 ms for the peer's delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    port = sock.getsockname()[1]

    def loaded() -> None:
        print(f"READY {port}", flush=True)

    def failed(message: str) -> None:
        failure.append(message)
        print(f"model server: {message}", file=sys.stderr, flush=True)
        if server is not None:
            server.should_exit = True

    app = create_app(
        lambda: load_runtime(args.runtime, args.model_dir, device=args.device, max_batch_size=args.max_batch_size,
                             max_queue=args.max_queue, gguf_type=args.gguf_type, threads=args.threads,
                             adapters=catalog.paths or None, max_adapters=args.max_adapters,
                             prefix_cache=args.prefix_cache),
        name=args.name or args.model_dir.name,
        catalog=catalog,
        default_max_new_tokens=args.max_new_tokens,
        on_loaded=loaded,
        on_failed=failed,
    )
    app.add_middleware(InstanceGuard, secret=secret, hosts=allowed_hosts(args.host, port),
                       max_body_bytes=args.max_body_bytes)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", proxy_headers=False)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
