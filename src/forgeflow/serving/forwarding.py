"""The gateway's forwarding core, under every scoring route (serving/gateway.py): checks the endpoint's key or
token, bounds and validates the body, picks a deployment (header, request's `model` or, when the body names none,
the `x-forgeflow-model` header naming a deployment or a fine-tune it serves, or traffic split; mirror copies on the
side) and a ready instance, admits or refuses the request, and forwards it, passing streams
through event by event (serving/relay.py). A request for an autoscaled deployment with no ready instance (scaled
to zero, or its instance still starting) wakes one and waits for it, up to request_timeout_ms, instead of failing.

Status codes follow Azure ML online endpoints: 400 bad body, 401 key, 404 no deployment with
traffic, 408 past request_timeout_ms, 413 too large, 424 model server failed (reason in
`ms-azureml-model-error-reason`), 429 too many pending (with Retry-After), 503 no ready instance.
Every answer from a chosen deployment carries `azureml-model-deployment`. Errors are in the route's dialect
(`schemas.error_body`), those an instance answered included.

Every server of a database serves every endpoint: the leader forwards to its supervisor's instances, a follower
to those the leader publishes (`EndpointService.ready_instances`). Admission counts are per server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from forgeflow import jsonbody
from forgeflow.errors import (Conflict, Forbidden, ForgeflowError, InvalidInput, NotFound, PayloadTooLarge,
                              RequestTimeout, ServerUnavailable, TooManyRequests, Unauthorized, UpstreamError, by_name)
from forgeflow.inference.adapters import MODEL_HEADER
from forgeflow.serving import access, routing, specs
from forgeflow.serving.auth import presented_credential
from forgeflow.serving.endpoints import DEFAULT_MAX_BODY_BYTES, EndpointService
from forgeflow.serving.hangup import HangUpWatch
from forgeflow.serving.metrics import Metrics
from forgeflow.serving.placement import Instance
from forgeflow.serving.records import Deployment, EndpointConfig
from forgeflow.serving.relay import Release, RelayResponse, header_int, relay
from forgeflow.serving.schemas import Dialect, error_body
from forgeflow.store.states import DeploymentState

DEPLOYMENT_HEADER = "azureml-model-deployment"
REASON_HEADER = "ms-azureml-model-error-reason"
RETRY = {"Retry-After": "1"}
ERRORS = {400: "body malformed (names the field)", 401: "missing or wrong key or token", 404: "no such endpoint or "
          "deployment, or none with traffic", 408: "past request_timeout_ms", 413: "body over the size limit",
          424: "the model server failed", 429: "too many pending requests", 503: "no ready instance"}
# Rewrites a parsed body before it is validated and forwarded (None: forward it as it came); raises InvalidInput.
Adapt = Callable[[Request, Any], Any]

log = logging.getLogger("forgeflow.gateway")


def max_body_bytes(cfg: EndpointConfig) -> int:
    """The endpoint's own limit, else FORGEFLOW_MAX_BODY_BYTES, else 1 MiB."""
    return cfg.max_body_bytes or int(os.environ.get("FORGEFLOW_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))


class Call:
    """One request through the gateway: what it needs for the answer and for the metrics."""

    def __init__(self, request: Request, endpoint: str, dialect: Dialect) -> None:
        self.request = request
        self.endpoint = endpoint
        self.dialect = dialect
        self.svc: EndpointService = request.app.state.ff.endpoints
        self.started = time.perf_counter()
        self.deployment: str | None = None
        self.known = False  # only existing endpoints get metric series
        self.by_instance = False  # an instance answered (not the gateway itself): its latency counts for scaling
        self.model_header: str | None = None  # the client's MODEL_HEADER, once checked: the instance gets it too
        self.sampled: list | None = None  # the prompt's messages, when a rollout's judge samples this deployment

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"x-request-id": uuid.uuid4().hex}
        if self.deployment:
            h[DEPLOYMENT_HEADER] = self.deployment
        return h | (extra or {})

    def fail(self, exc: ForgeflowError, headers: dict | None = None, *, refused: bool = False) -> Response:
        """The error answer, in the route's dialect; `refused`: the gateway's own 503 for want of a ready instance
        (counted apart, so a rollout does not read a deployment being placed again as failing)."""
        self.record(exc.status_code, refused=refused)
        return JSONResponse(error_body(self.dialect, exc), status_code=exc.status_code, headers=self.headers(headers))

    def record(self, status: int, completion_tokens: int | None = None, prompt_tokens: int | None = None, *,
               refused: bool = False) -> None:
        if not self.known:
            return
        m = self.svc.metrics
        labels = Metrics.labels(endpoint=self.endpoint, deployment=self.deployment)
        m.inc("forgeflow_requests_total", labels + (("code", str(status)),))
        if refused:
            m.inc("forgeflow_refused_requests_total", labels)
        took = time.perf_counter() - self.started
        m.observe("forgeflow_request_duration_seconds", labels, took)
        if self.by_instance:
            m.observe("forgeflow_instance_request_duration_seconds", labels, took)
        if completion_tokens:
            m.inc("forgeflow_generated_tokens_total", labels, completion_tokens)
        if prompt_tokens:
            m.inc("forgeflow_prompt_tokens_total", labels, prompt_tokens)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None once it is over the limit (read no further than that)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def authorized_config(call: Call) -> EndpointConfig:
    """The endpoint's configuration once the presented key opens it. An unknown endpoint answers like a wrong key,
    so names cannot be probed apart from keys (and the guard limits failed keys per address)."""
    endpoint = call.endpoint
    try:
        cfg = await call.svc.view(endpoint)
    except NotFound:
        cfg = None
    call.known = cfg is not None
    if cfg is None or not await access.authorize(call.svc.ws.identity, cfg, presented_credential(call.request)):
        raise Unauthorized(f"missing or wrong key for endpoint {endpoint!r}, or no such endpoint: send "
                           f"'Authorization: Bearer <key>' or 'api-key: <key>' (see: forgeflow online-endpoint "
                           f"get-credentials --name {endpoint})")
    return cfg


async def handle(request: Request, endpoint: str, path: str, parse: Callable[[Any], Any], dialect: Dialect,
                 adapt: Adapt | None = None) -> Response:
    """Serve one scoring request: `path` is the instance's route it goes to, `parse` validates the body (raising
    InvalidInput naming the field) and its result's `model` and `stream` say where it goes and how it comes back.
    Only /score reaches a flow deployment, with the flow's inputs."""
    call = Call(request, endpoint, dialect)
    try:
        cfg = await authorized_config(call)
        limit = max_body_bytes(cfg)
        raw = await _read_body(request, limit)
        if raw is None:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes")
        body = jsonbody.loads(raw)
        call.model_header = _model_header(request)
        if adapt is not None and (changed := adapt(request, body)) is not None:
            body, raw = changed, json.dumps(changed).encode()
        # A flow deployment takes its flow's inputs on /score, so the chat contract is checked
        # only once the chosen deployment is known to serve a model.
        scoring = dialect == Dialect.SCORE
        serves_flows = any(d.serves_flow for d in cfg.deployments.values())
        parsed = parse(body) if not scoring or not serves_flows else None
        model = getattr(parsed, "model", None)
        if not isinstance(model, str):  # a body without `model` (/score's always) may name it in the header
            model = call.model_header
        call.deployment, by_traffic = routing.choose_deployment(cfg, request.headers.get(DEPLOYMENT_HEADER), model)
        if serves_flows:
            if not cfg.deployments[call.deployment].serves_flow:
                parsed = parsed or parse(body)
            elif not scoring:
                raise InvalidInput(f"deployment {call.deployment!r} serves a flow: send the flow's inputs to /score")
            elif not isinstance(body, dict):
                raise InvalidInput("the body must be a JSON object of the flow's inputs")
        if by_traffic:
            mirror = routing.choose_mirror(cfg, call.deployment)
            if mirror:
                _mirror(call, cfg, mirror, path, raw)
        stream = getattr(parsed, "stream", False) is True
        samples = getattr(request.app.state.ff, "samples", None)
        if not stream and samples is not None and samples.wants((endpoint, call.deployment)):
            call.sampled = _messages_of(body)
        return await _forward(call, cfg, path, raw, stream)
    except ForgeflowError as e:
        return call.fail(e)


async def _forward(call: Call, cfg: EndpointConfig, path: str, raw: bytes, stream: bool) -> Response:
    svc = call.svc
    assert call.deployment is not None
    dep = cfg.deployments[call.deployment]
    timeout_s = dep.request_timeout_s
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s  # one for the whole request: waiting for a wake takes from the answer's time
    ready = svc.ready_instances(dep.key)
    if not ready and not svc.leading:  # a follower's copy of the leader's board may lag: read it once more
        ready = await run_in_threadpool(svc.ready_instances_now, dep.key)
    if not ready and (not dep.autoscaled or dep.state == DeploymentState.FAILED):
        # Not yet placed (starting, or placed again on a new leader) is the gateway refusing, not the deployment
        # failing; a Failed deployment is failing its users.
        return call.fail(ServerUnavailable(f"deployment {dep.name!r} has no ready instance (state {dep.state}); "
                                           "retry shortly"), RETRY, refused=dep.state != DeploymentState.FAILED)
    # While an autoscaled deployment wakes, it takes the requests one instance would.
    ticket = svc.admission.admit(dep.key, dep.request_settings, len(ready) or 1)
    if ticket is None:
        return call.fail(TooManyRequests(
            f"deployment {dep.name!r} already has {svc.admission.pending(dep.key)} pending requests, the most it "
            f"takes (2 x max_concurrent_requests_per_instance {specs.max_concurrent(dep.request_settings)} x "
            f"{len(ready) or 1} ready instances); retry later or raise it with: forgeflow online-deployment update "
            f"--set request_settings.max_concurrent_requests_per_instance=N"), RETRY)
    handed_over = False
    watch = HangUpWatch(call.request)
    try:
        if not ready:
            ready = await _woken(svc, dep, deadline)
        session: aiohttp.ClientSession = call.request.app.state.ff.http
        while True:
            inst = ticket.place(ready)
            left = max(deadline - loop.time(), 0.001)
            try:
                resp = await asyncio.wait_for(session.post(f"{inst.url}{path}", data=raw,
                                                           timeout=upstream_timeout(left), allow_redirects=False,
                                                           headers=_instance_headers(call, inst)), left)
            except aiohttp.ClientConnectorError:
                # Nothing reached the instance (it died since the last probe): try another one.
                svc.mark_unready(inst)
                ticket.unplace()  # while it waits, the dead instance must not count it (a drain waits for it)
                ready = [i for i in ready if i is not inst and i.ready]
                if not ready and dep.autoscaled:  # e.g. drained by a scale-in just now
                    ready = await _woken(svc, dep, deadline)
                if not ready:
                    return call.fail(ServerUnavailable(f"deployment {dep.name!r} has no ready instance; retry shortly"),
                                     RETRY)
                continue
            except asyncio.TimeoutError:  # aiohttp's own timeouts are asyncio's too
                return call.fail(_too_slow(timeout_s))
            except aiohttp.ClientError as e:
                failed = UpstreamError(f"the model server of deployment {dep.name!r} failed: {type(e).__name__}")
                return call.fail(failed, {REASON_HEADER: "model_server_unreachable"})
            break
        if stream and resp.status == 200 and resp.headers.get("content-type", "").startswith("text/event-stream"):
            handed_over = True
            call.by_instance = True
            done = Release(call, resp, ticket)
            return RelayResponse(relay(call, resp, done, _too_slow(timeout_s)), done,
                                 media_type="text/event-stream", headers=call.headers({"cache-control": "no-cache"}))
        try:
            content = await asyncio.wait_for(resp.read(), max(deadline - loop.time(), 0.001))
        except asyncio.TimeoutError:
            resp.close()
            return call.fail(_too_slow(timeout_s))
        except aiohttp.ClientError as e:
            resp.close()
            return call.fail(UpstreamError(f"the model server failed while answering: {type(e).__name__}"),
                             {REASON_HEADER: "model_server_unreachable"})
        except BaseException:  # cancelled (the client left): the connection is not reused half-read
            resp.close()
            raise
        resp.release()
        return _answer(call, resp, content)
    except ServerUnavailable as e:  # no instance woke in time, or none could be started
        return call.fail(e, RETRY)
    except asyncio.CancelledError:
        if not watch.left():
            raise
        call.record(499)  # the instance sees its connection close and stops decoding the answer
        return Response(status_code=499)
    finally:
        watch.stop()
        if not handed_over:
            ticket.release()


async def _woken(svc: EndpointService, dep: Deployment, deadline: float) -> list[Instance]:
    """The ready instances of an autoscaled deployment that had none, once there are: one is woken if it is
    scaled to zero, and the request waits for it until its deadline (request_timeout_ms after it arrived; a client
    that leaves cancels the wait: see HangUpWatch). The wake is asked again each second, as a deployment cannot
    scale while it is being updated. An instance that cannot be started is a 503 at once, with the reason."""
    loop = asyncio.get_running_loop()
    asked = -math.inf
    while not (ready := svc.ready_instances(dep.key)):
        moment = loop.time()
        if moment >= deadline:
            raise ServerUnavailable(
                f"deployment {dep.name!r} had no ready instance and none became ready within request_timeout_ms="
                f"{int(dep.request_timeout_s * 1000)} (an autoscaled deployment starts one when it has none); retry "
                f"shortly, or keep one running with: forgeflow online-deployment update --name {dep.name} "
                f"--endpoint-name {dep.endpoint} --set scale_settings.min_instances=1")
        if moment - asked >= 1.0:
            asked = moment
            await _wake(svc, dep)
        await asyncio.sleep(0.05)
    return ready


async def _wake(svc: EndpointService, dep: Deployment) -> None:
    """Ask for an instance of a deployment scaled to zero (off the event loop: it starts a process or an
    actor); a failure to start one is a 503 that says why."""
    try:
        await asyncio.to_thread(svc.autoscaler.wake, dep.key)
    except Exception as e:  # the placement's own failure (a target gone, a program that cannot start)
        log.warning("could not wake deployment %s/%s: %s", dep.endpoint, dep.name, e)
        reason = e.message if isinstance(e, ForgeflowError) else f"{type(e).__name__}: {e}"
        raise ServerUnavailable(f"deployment {dep.name!r} is scaled to zero and no instance could be started: "
                                f"{reason}; retry shortly (see: forgeflow online-deployment get-logs --name "
                                f"{dep.name} --endpoint-name {dep.endpoint})") from e


def upstream_timeout(seconds: float) -> aiohttp.ClientTimeout:
    """An instance's time to connect and for each read (of the answer's head, of each chunk of a stream)."""
    return aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)


def _too_slow(timeout_s: float) -> RequestTimeout:
    return RequestTimeout(f"the model did not answer within request_timeout_ms={int(timeout_s * 1000)}")


def _answer(call: Call, resp: aiohttp.ClientResponse, content: bytes) -> Response:
    call.by_instance = True
    status = resp.status
    if status == 401:  # not the caller's key: the instance refused ours (another process on its port)
        return call.fail(UpstreamError("the model server refused the gateway's instance key; retry shortly"),
                         {REASON_HEADER: "model_server_refused", **RETRY})
    if status == 503:
        reason = _upstream_error(503, content).message
        return call.fail(ServerUnavailable(f"the instance is not ready: {reason}; retry shortly"), RETRY)
    if status >= 500:
        reason = _upstream_error(status, content).message
        return call.fail(UpstreamError(f"the model server failed: {reason}"[:1000]), {REASON_HEADER: "model_error"})
    if status >= 400:  # the instance's refusal (a field it cannot honour), in this route's dialect
        return call.fail(_upstream_error(status, content), RETRY if status == 429 else None)
    extra = {h: resp.headers[h] for h in ("x-forgeflow-prompt-tokens", "x-forgeflow-completion-tokens",
                                          "x-forgeflow-finish-reason") if h in resp.headers}
    call.record(status, header_int(extra.get("x-forgeflow-completion-tokens")),
                header_int(extra.get("x-forgeflow-prompt-tokens")))
    if call.sampled and (text := _answer_text(content)) is not None:
        call.request.app.state.ff.samples.offer((call.endpoint, call.deployment), call.sampled, text)
    return Response(content, status_code=status, media_type="application/json", headers=call.headers(extra))


def _messages_of(body: Any) -> list | None:
    """A chat body's messages (/score's input_string, OpenAI's and Azure's messages); None for a raw completion."""
    if not isinstance(body, dict):
        return None
    inner = body.get("input_data")
    messages = inner.get("input_string") if isinstance(inner, dict) else body.get("messages")
    return messages if isinstance(messages, list) else None


def _answer_text(content: bytes) -> str | None:
    """The answer's text (/score's output, a chat completion's first choice), for a rollout's judge."""
    try:
        body = json.loads(content)
        text = body["output"] if "output" in body else body["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return text if isinstance(text, str) else None


def _upstream_error(status: int, content: bytes) -> ForgeflowError:
    """An instance's error answer as the exception it stands for, whichever shape it came in: forgeflow's
    (`{"error": CLASS, "message", "field"}`), OpenAI's or Azure's (`{"error": {...}}`), FastAPI's
    (`{"detail": ...}`), or not JSON at all."""
    kind = _BY_STATUS.get(status, ForgeflowError)
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    message, name, field = content.decode(errors="replace") or f"the model server answered {status}", None, None
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and inner.get("message"):
            message, name, field = inner["message"], inner.get("code"), inner.get("param") or inner.get("target")
        elif body.get("message"):
            message, name, field = body["message"], body.get("error"), body.get("field")
        elif isinstance(body.get("detail"), str):
            message = body["detail"]
    return by_name(str(name), kind)(str(message), field=field if isinstance(field, str) else None, status_code=status)


_BY_STATUS = {c.status_code: c for c in (InvalidInput, Unauthorized, Forbidden, NotFound, RequestTimeout, Conflict,
                                         PayloadTooLarge, TooManyRequests)}


def _model_header(request: Request) -> str | None:
    """The client's MODEL_HEADER (a deployment or registered fine-tune it names), or None without one; a value
    that is no such name (not ASCII, or not a model reference) is a 400 naming the header."""
    value = request.headers.get(MODEL_HEADER)
    if value is None:
        return None
    if not value.isascii() or not _MODEL_NAME.fullmatch(value.strip()):
        raise InvalidInput(f"header {MODEL_HEADER} must name a deployment or a registered model (NAME, "
                           f"NAME:VERSION or NAME@latest, in ASCII letters, digits and . _ - : @), got {value!r}",
                           field=MODEL_HEADER)
    return value.strip()


_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,255}")


def _instance_headers(call: Call, inst: Instance) -> dict[str, str]:
    """What an instance gets besides the body: its own credentials, and of the client's headers only the
    fine-tune MODEL_HEADER names (the instance's pick when the body names no `model`)."""
    headers = {"content-type": "application/json", **inst.auth}
    if call.model_header:
        headers[MODEL_HEADER] = call.model_header
    return headers


def _mirror(call: Call, cfg: EndpointConfig, deployment: str, path: str, raw: bytes) -> None:
    """Send a copy in the background; its answer is discarded and never reaches the caller."""
    svc, dep = call.svc, cfg.deployments[deployment]
    ready = svc.ready_instances(dep.key)
    if not ready and dep.autoscaled and dep.state != DeploymentState.FAILED:
        # Scaled to zero (or waking): this copy is dropped, but the deployment is woken for the next ones.
        _background_task(_mirror_wake(svc, dep))
        return
    ticket = svc.admission.admit(dep.key, dep.request_settings, len(ready))
    if ticket is None:
        return  # a mirror never queues up behind its limit (nor goes where no instance is ready)
    session: aiohttp.ClientSession = call.request.app.state.ff.http
    inst = ticket.place(ready)

    async def send() -> None:
        code = "error"
        try:
            async with session.post(f"{inst.url}{path}", data=raw, headers=_instance_headers(call, inst),
                                    allow_redirects=False,  # an instance's 3xx is not followed with its secret
                                    timeout=aiohttp.ClientTimeout(total=dep.request_timeout_s)) as resp:
                await resp.read()
                code = str(resp.status)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        finally:
            ticket.release()
            svc.metrics.inc("forgeflow_mirrored_requests_total",
                            Metrics.labels(endpoint=call.endpoint, deployment=deployment, code=code))

    _background_task(send())


async def _mirror_wake(svc: EndpointService, dep: Deployment) -> None:
    try:
        await _wake(svc, dep)
    except ServerUnavailable:
        pass  # logged by _wake; the next mirrored copy asks again


def _background_task(work) -> None:
    task = asyncio.get_running_loop().create_task(work)
    _background.add(task)
    task.add_done_callback(_background.discard)


_background: set[asyncio.Task] = set()
