"""Flows: the bundled examples and the workspace's flows, described for drawing, and test runs.

What runs where: describing a flow (show, and the check of a test run's variant) reads it in the server, and for a
flex flow that imports its entry module there, since its inputs come from the entry's signature (a DAG's python
nodes are not imported to describe it). Running a flow happens in its own process (`python -m
forgeflow.flows.oneshot`): the tools' code runs and the flow's environment variables are set there, never in the
server, and a run past its timeout or whose caller went away is killed.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydantic
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from forgeflow.api.security import CONTRIBUTOR, READER, audit_target, services
from forgeflow.errors import ForgeflowError, InvalidInput, UpstreamError, by_name, shorten
from forgeflow.flows.batch import compare, summary
from forgeflow.flows.catalog import EXAMPLES, FlowCatalog
from forgeflow.flows.loader import load_flow
from forgeflow.flows.runs import RunRecord
from forgeflow.names import client_path

router = APIRouter(tags=["flows"])
_LINE_LIMIT = 16 << 20


class FlowAdd(pydantic.BaseModel, extra="forbid"):
    name: str = pydantic.Field(description="Name in the workspace (letters, digits, '.', '_', '-').")
    path: str = pydantic.Field(description="A flow folder on the server's machine; it is copied in.")
    overwrite: bool = False


class FlowTest(pydantic.BaseModel, extra="forbid", allow_inf_nan=False):
    inputs: dict[str, Any] = pydantic.Field(default_factory=dict, description="Flow inputs by name.")
    stream: bool = pydantic.Field(False, description="Answer server-sent events: output chunks, then the result.")
    timeout_s: float = pydantic.Field(300, gt=0, le=3600, description="Kill the run after this many seconds.")
    variant: str | None = pydantic.Field(None, description="Run this node variant instead of the node's default: "
                                                           "'${NODE.VARIANT_ID}', e.g. '${chat.variant_1}'.")


def catalog(ff=Depends(services)) -> FlowCatalog:
    return FlowCatalog(ff.ws.paths.flows)


@router.get("/flows", dependencies=READER)
def list_flows(cat: FlowCatalog = Depends(catalog)) -> list[dict]:
    return cat.list()


@router.post("/flows", status_code=201, dependencies=CONTRIBUTOR)
def add_flow(body: FlowAdd, request: Request, cat: FlowCatalog = Depends(catalog)) -> dict:
    audit_target(request, body.name)
    return cat.add(body.name, client_path(body.path, "path"), overwrite=body.overwrite)


@router.get("/flows/{name}", dependencies=READER)
def show_flow(name: str, cat: FlowCatalog = Depends(catalog)) -> dict:
    """Inputs, outputs, nodes and the edges between them (`inputs.X` -> node -> `outputs.Y`)."""
    return cat.show(name)


@router.delete("/flows/{name}", dependencies=CONTRIBUTOR)
def delete_flow(name: str, cat: FlowCatalog = Depends(catalog)) -> dict:
    cat.delete(name)
    return {"deleted": name}


@router.post("/flows/{name}/test", dependencies=CONTRIBUTOR)
async def test_flow(name: str, body: FlowTest, request: Request, cat: FlowCatalog = Depends(catalog), ff=Depends(services)):
    """Run the flow once with `inputs`. JSON `{outputs, nodes, duration_s}`; with `stream`, server-sent events
    `{"output", "delta"}` as outputs stream, then `{"done": true, ...}` or `{"error", "message"}`."""
    path = cat.path(name)
    _check_finite(body.inputs)
    if body.variant:
        load_flow(path, body.variant)  # an unknown node or variant is a 400 here, before a process starts
    events = _run(path, body, ff.ws.paths.root, request)
    if body.stream:
        async def sse() -> AsyncIterator[bytes]:
            async for event in events:
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()
        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        async for event in events:
            if "error" in event:
                raise _as_error(event)
            if event.get("done"):
                return {k: v for k, v in event.items() if k != "done"}
    finally:
        await events.aclose()  # stops the process now, not when the generator is collected
    raise ForgeflowError("the flow run ended without a result")


@router.get("/flow-runs", dependencies=READER)
def list_runs() -> list[dict]:
    """Batch runs (`forgeflow flow run`), oldest first: status, flow, variant, base run, lines."""
    keys = ("status", "flow", "variant", "run", "total_lines", "created_at")
    return [{"name": r.name, **{k: r.meta().get(k) for k in keys}} for r in RunRecord.all()]


@router.get("/flow-runs/compare", dependencies=READER)
def compare_runs(runs: list[str] = Query(default=[], description="Run names: repeat it, or NAME,NAME.")) -> dict:
    """Runs side by side, as `forgeflow flow run compare`: `{"metrics": [names], "runs": [{name, variant, base_run,
    status, total_lines, completed_lines, failed_lines, metrics}]}`; an evaluation run's variant is its base run's."""
    return compare([n for item in runs for n in item.split(",") if n.strip()])


@router.get("/flow-runs/{name}", dependencies=READER)
def show_run(name: str) -> dict:
    """A batch run's status, flow, variant, data, line counts and metrics."""
    record = RunRecord.open(name)
    return {**summary(record), "metrics": record.metrics()}


def _check_finite(inputs: dict[str, Any]) -> None:
    """Refuse NaN and infinities anywhere in the inputs (JSON bodies may spell them NaN, Infinity or 1e999): JSON
    itself has no such numbers, so a flow that passes one on could never answer."""
    stack = [(f"inputs.{name}", value) for name, value in inputs.items()]
    while stack:
        where, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInput(f"{where}: {value} is not a finite number", field=where)
        if isinstance(value, dict):
            stack += [(f"{where}.{key}", item) for key, item in value.items()]
        elif isinstance(value, list):
            stack += [(f"{where}[{i}]", item) for i, item in enumerate(value)]


def _as_error(event: dict) -> ForgeflowError:
    """A run's error event as the HTTP error: the flow's own failures are 424, like a failing model server."""
    return by_name(event["error"], UpstreamError)(event.get("message") or "the flow run failed", field=event.get("field"))


async def _run(path: Path, body: FlowTest, home: Path, request: Request) -> AsyncIterator[dict]:
    env = dict(os.environ, FORGEFLOW_HOME=str(home), PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "forgeflow.flows.oneshot", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env, limit=_LINE_LIMIT,
        start_new_session=True)
    request_doc = {"flow": str(path), "inputs": body.inputs, "stream": body.stream, "variant": body.variant,
                   "keep_details": not path.is_relative_to(EXAMPLES)}
    proc.stdin.write(json.dumps(request_doc).encode())
    await proc.stdin.drain()
    proc.stdin.close()
    deadline = asyncio.get_running_loop().time() + body.timeout_s
    finished = False
    try:
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                yield {"error": "RequestTimeout", "message": f"the flow run took longer than {body.timeout_s:g} s "
                       "and was stopped (raise timeout_s)"}
                return
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), timeout=min(left, 1.0))
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return
                continue
            if not line:
                break
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a flow printing to stdout: not an event
            if isinstance(event, dict):
                if "error" in event:  # the flow's own code writes the message: it may be any size
                    event["message"] = shorten(str(event.get("message") or "the flow run failed"))
                yield event
                if event.get("done") or "error" in event:
                    finished = True
                    return
        await proc.wait()
        if not finished:
            yield {"error": "FlowError", "message": f"the flow process ended with exit code {proc.returncode} "
                   "before reporting a result"}
    finally:
        if proc.returncode is None:
            _kill_group(proc.pid)
            await proc.wait()


def _kill_group(pid: int) -> None:
    """The run and whatever its flow's code started (it leads its own process group)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
