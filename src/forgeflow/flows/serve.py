"""Serve one flow over HTTP: `POST /score` (inputs in, outputs out) and `GET /health`.

Requests run on a thread pool so slow tools or model calls overlap; with
`Accept: text/event-stream` a streaming output is sent as server-sent events, one
`data: {"<output>": "<chunk>"}` event per chunk (Prompt flow's shape). An optional key is
checked in constant time against `Authorization: Bearer <key>` (or an `api-key` header).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from forgeflow import __version__
from forgeflow import jsonbody
from forgeflow.errors import ForgeflowError, InvalidInput, Unauthorized
from forgeflow.flows.chat import drain, is_stream
from forgeflow.flows.contract import ConnectionProvider
from forgeflow.flows.executor import run_flow
from forgeflow.flows.loader import load_flow
from forgeflow.flows.result import jsonable
from forgeflow.store.secrets import same


def _events(outputs: dict) -> Iterator[bytes]:
    fixed = {k: v for k, v in outputs.items() if not is_stream(v)}
    if fixed:
        yield f"data: {json.dumps(jsonable(fixed), ensure_ascii=False)}\n\n".encode()
    try:
        for name, value in outputs.items():
            if is_stream(value):
                for chunk in value:
                    yield f"data: {json.dumps({name: '' if chunk is None else str(chunk)}, ensure_ascii=False)}\n\n".encode()
    except ForgeflowError as exc:
        yield f"event: error\ndata: {json.dumps(exc.to_dict())}\n\n".encode()


def create_flow_app(flow_dir: Path, *, connection_provider: ConnectionProvider | None = None, key: str | None = None,
                    workers: int = 8) -> FastAPI:
    """The flow server app; the flow is checked once here so a broken flow fails at start."""
    flow = load_flow(flow_dir)
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="forgeflow-flow")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            yield
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title=f"forgeflow flow: {flow.dir.name}", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # their pages load Swagger UI and ReDoc from a CDN

    @app.exception_handler(ForgeflowError)
    async def _domain_error(_request: Request, exc: ForgeflowError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status_code)

    def check_key(request: Request) -> None:
        if not key:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("api-key", "")
        if not same(given, key):
            raise Unauthorized("missing or wrong key: send 'Authorization: Bearer <key>'")

    @app.get("/health")
    def health() -> dict:
        return {"status": "Healthy", "flow": flow.dir.name, "version": __version__}

    @app.post("/score")
    async def score(request: Request):
        check_key(request)
        inputs = jsonbody.loads(await request.body() or b"{}", what="the body (a JSON object of flow inputs)")
        if not isinstance(inputs, dict):
            raise InvalidInput("the body must be a JSON object of flow inputs")
        wants_events = "text/event-stream" in request.headers.get("accept", "")
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            pool, lambda: run_flow(flow.dir, inputs, connection_provider=connection_provider, stream=wants_events))
        if wants_events and any(is_stream(v) for v in result.outputs.values()):
            return StreamingResponse(_events(result.outputs), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        outputs = await loop.run_in_executor(pool, drain, result.outputs)
        return JSONResponse(jsonable(outputs))

    return app


def main(argv: list[str] | None = None) -> int:
    """`python -m forgeflow.flows.serve --flow DIR --port P`: a flow as an online-deployment instance.

    The deployment supervisor starts this on loopback; the gateway in front checks the endpoint's key,
    and the instance answers only the gateway (`InstanceGuard`: the secret its placement passed in
    FORGEFLOW_INSTANCE_SECRET, its own Host, a bounded body) on every route. It exits when the server
    that started it is gone. Connections come from the local workspace.
    """
    import argparse
    import socket

    import uvicorn

    from forgeflow.inference.instance_guard import DEFAULT_MAX_BODY_BYTES, InstanceGuard, allowed_hosts
    from forgeflow.processes import INSTANCE_SECRET_ENV, exit_with_parent, take_instance_secret
    from forgeflow.store.connections import local_connection_lookup

    parser = argparse.ArgumentParser(prog="python -m forgeflow.flows.serve")
    parser.add_argument("--flow", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="flow")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    args = parser.parse_args(argv)
    exit_with_parent()
    secret = take_instance_secret()
    if not secret:
        print(f"error: {INSTANCE_SECRET_ENV} is not set: a flow instance answers only the gateway that started it",
              flush=True)
        return 2
    try:
        app = create_flow_app(args.flow, connection_provider=local_connection_lookup(), workers=args.workers)
    except ForgeflowError as exc:
        print(f"error: {exc.message}", flush=True)
        return 1
    app.add_middleware(InstanceGuard, secret=secret, hosts=allowed_hosts(args.host, args.port),
                       max_body_bytes=args.max_body_bytes)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    print(f"READY {args.port}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", proxy_headers=False)).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
