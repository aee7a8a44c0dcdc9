"""The forgeflow server app: REST control plane, job runner, deployment supervisor and scoring gateway in one
process. This is the one composition root: it alone builds the services and mounts every router (the REST
routers, the gateway's, the Studio's pages).

Several servers may share one database: each serves the API and the gateway, and the one that holds the leader
lock (store/leadership.py) also runs the job runner's loop and the deployment supervisor. A follower that wins the
lock starts them: the runner attaches to the workers still running, the supervisor starts every deployment.
Every server also serves each endpoint at Azure-style URLs: on its host name, and on its own port, which every
server listens on (api/endpoint_addresses.py)."""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from forgeflow import __version__, raycluster
from forgeflow.api import (audit, compute, connections, datasets, endpoints, evaluations, flows, jobs, models, rollouts,
                           token, users)
from forgeflow.api.endpoint_addresses import EndpointRouting, PortListeners
from forgeflow.api.guard import Guard
from forgeflow.api.scoring_path import ScoringPath
from forgeflow.api.security import OWNER, READER
from forgeflow.errors import ForgeflowError, InternalError, InvalidInput, by_name
from forgeflow.evaluation.report import registry_summary
from forgeflow.evaluation.rollout import RolloutController, RolloutService
from forgeflow.evaluation.rollout_judge import judge_sides
from forgeflow.serving import gateway
from forgeflow.serving.endpoint_hosts import EndpointAddresses
from forgeflow.serving.endpoints import EndpointService
from forgeflow.serving.placement import LocalPlacement, TargetPlacement
from forgeflow.serving.ray_placement import RayPlacement
from forgeflow.serving.samples import AnswerSamples
from forgeflow.serving.schemas import dialect_of, error_body, install_openapi
from forgeflow.serving.supervisor import DeploymentSupervisor
from forgeflow.serving.throttle import FailureLimiter
from forgeflow.store.connections import ConnectionStore
from forgeflow.store.leadership import Leadership, leader_lock, servers
from forgeflow.store.workspace import Workspace
from forgeflow.studio import pages
from forgeflow.training.compute.targets import ComputeTargets
from forgeflow.training.runner import JobRunner

log = logging.getLogger("forgeflow.server")


@dataclass
class Services:
    ws: Workspace
    runner: JobRunner
    supervisor: DeploymentSupervisor
    endpoints: EndpointService
    connections: ConnectionStore
    addresses: EndpointAddresses
    rollouts: RolloutService
    rollout_controller: RolloutController
    samples: AnswerSamples  # answers the gateway samples for a rollout's judge (the leader's)
    leadership: Leadership | None = None  # None: the background threads are off, nothing leads (unit tests)
    http: aiohttp.ClientSession | None = None
    ports: PortListeners | None = None  # None: this server listens on no endpoint's own port


def create_app(ws: Workspace | None = None, *, base_url: str = "http://127.0.0.1:8765",
               background: bool = True, endpoint_domain: str | None = None,
               endpoint_ports: bool | None = None, endpoint_port_range: str | None = None) -> FastAPI:
    """Build the app. `background=False` leaves the runner and supervisor threads off and contends for no
    leadership (unit tests); changes still reach the supervisor directly. `endpoint_domain`: what endpoints' host
    names end in; `endpoint_port_range`: the ports endpoints may have, FIRST-LAST (serving/endpoint_hosts.py);
    `endpoint_ports`: listen on the endpoints' own ports too, at base_url's host (by default when `background`)."""
    ws = ws or Workspace.open()
    # A deployment runs where its compute target is: this machine, or the nodes of a Ray cluster.
    placement = TargetPlacement(LocalPlacement(ws.paths), ComputeTargets(ws.store).get, RayPlacement)
    endpoint_service = EndpointService(ws, placement, base_url, endpoint_domain, endpoint_port_range)
    samples = AnswerSamples()
    rollout_service = RolloutService(endpoint_service, samples, lambda: services.leadership.server_id
                                     if services.leadership is not None else "local")
    services = Services(
        ws=ws,
        runner=JobRunner(ws.store, ws.paths, summarize=registry_summary),
        supervisor=endpoint_service.supervisor,
        endpoints=endpoint_service,
        connections=ConnectionStore(ws),
        addresses=EndpointAddresses(endpoint_service.addresses),
        rollouts=rollout_service,
        rollout_controller=RolloutController(rollout_service, judge_sides),
        samples=samples,
    )

    def lead() -> None:
        assert services.leadership is not None
        services.runner.start()
        services.endpoints.lead(services.leadership.server_id)
        services.rollout_controller.start()  # after the supervisor: a resumed rollout's deployments are placed

    def lost() -> None:
        """Another server may lead already: this one must not start a job or an instance a moment longer. It exits
        at once (its instances end with it, its workers go on under the new leader) rather than unwind threads that
        may still be writing; a service manager starts it again, as a follower."""
        log.critical("leadership lost: exiting so that only the new leader runs jobs and deployments")
        logging.shutdown()
        os._exit(LEADERSHIP_LOST_EXIT)

    if background:
        services.leadership = Leadership(ws.store, leader_lock(ws.store), url=base_url, on_elected=lead, on_lost=lost,
                                         load=lambda: endpoint_service.admission.snapshot()
                                         | {"outcomes": endpoint_service.metrics.outcomes()})
        services.endpoints.leading = False  # until elected: changes go through the store to the leader

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # the gateway's client to its instances: aiohttp's C-parsed keep-alive pool, about twice as quick a hop as
        # httpx's (bench/README.md); no cookies, no proxy from the environment, bodies passed on as they come
        # (idle connections let go after 4 s, before the instances' uvicorn closes them at 5 s)
        services.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=4),
                                              auto_decompress=False,
                                              skip_auto_headers=("Accept-Encoding",),  # answers come uncompressed
                                              cookie_jar=aiohttp.DummyCookieJar())
        if services.leadership is not None:
            services.endpoints.follow()  # until elected
            services.leadership.start()  # leads at once when no other server does
        if services.ports is not None:
            await services.ports.start()  # followers too: every server serves every endpoint
        try:
            yield
        finally:
            if services.ports is not None:
                await services.ports.stop()  # first: the requests in flight there finish while instances run
            if services.leadership is not None:
                services.runner.stop()
            services.rollout_controller.stop()  # before the deployments stop: no step moves traffic to none
            services.endpoints.shutdown()  # also the instances a deployment created without the background threads
            if services.leadership is not None:
                services.leadership.stop()  # after: a successor starts only once this server's instances are gone
            raycluster.disconnect()  # a Ray cluster's instances are stopped: stop being its driver
            await services.http.close()

    # no redirect to the path with or without a trailing slash: Starlette builds its Location from the client's
    # Host, and under /endpoints/ it would answer before any key is checked; such a path is a 404
    app = FastAPI(title="forgeflow", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Local fine-tuning, model registry, online endpoints and flows.", redirect_slashes=False)
    app.state.ff = services

    @app.exception_handler(ForgeflowError)
    async def _domain_error(_request: Request, exc: ForgeflowError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _body_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await _domain_error(request, invalid_input(exc))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        """Starlette's own refusals (no such route, method not allowed, a body it cannot parse) in the tree's shape,
        or under /endpoints/NAME in the dialect of the path: a path no route pattern matches (a control character
        in it) is refused here, not by the gateway's catch-all, and an OpenAI client must still read the error."""
        error = by_name(_HTTP_NAMES.get(exc.status_code, ""))(str(exc.detail), status_code=exc.status_code)
        path = request.url.path
        body = error_body(dialect_of(path), error) if path.startswith("/endpoints/") else error.to_dict()
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        """A failure nothing expected: a 500 in the shape of the route's dialect, so an endpoint's clients show it
        (OpenAI's under /v1, Azure's on the Azure AI model inference routes, else the tree's). This handler runs
        outside EndpointRouting, so a request on an endpoint's host name or port has its bare path here, which
        `dialect_of` reads the same way."""
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        error = InternalError(f"unexpected server error ({type(exc).__name__}); its details are in the server's log")
        return JSONResponse(error_body(dialect_of(request.url.path), error), status_code=error.status_code)

    # Starlette tries routes in order: scoring requests are the hot path, so the gateway goes first.
    app.include_router(gateway.router)

    @app.get("/api/health", tags=["server"])
    def health() -> dict:
        """Public: whether this server answers, and whether it leads (runs jobs and deployments)."""
        lead = services.leadership
        role = "leader" if lead is None or lead.leads else "follower"
        return {"status": "ok", "version": __version__, "role": role}

    @app.get("/api/workspace", tags=["server"], dependencies=OWNER)
    def workspace() -> dict:
        """Where this workspace keeps its state (database, MLflow, artifacts; passwords masked): for owners only,
        since a database's host and user help an attacker."""
        return ws.describe()

    @app.get("/api/servers", tags=["server"], dependencies=READER)
    def list_servers() -> list[dict]:
        """Every server of this workspace's database, which one leads, and which one answered."""
        me = services.leadership.server_id if services.leadership else None
        return [row | {"this": row["id"] == me} for row in servers(ws.store)]

    app.include_router(endpoints.metrics_router)
    for module in (jobs, evaluations, datasets, models, endpoints, rollouts, connections, compute, flows, token, users,
                   audit):
        app.include_router(module.router, prefix="/api")
    app.include_router(pages.api)
    app.include_router(pages.router)
    install_openapi(app)
    # Innermost: scoring requests go straight to their route's function, past FastAPI's router.
    app.add_middleware(ScoringPath, routes=gateway.SCORING_ROUTES)
    # Outside every route: credentials, body caps and the limit on failed credentials act before a body is read.
    app.add_middleware(Guard, throttle=FailureLimiter())
    # Outside the guard, so that it sees a request on an endpoint's host name or port as /endpoints/NAME/...
    app.add_middleware(EndpointRouting, addresses=services.addresses, domain=endpoint_service.domain,
                       base_url=base_url)
    if background if endpoint_ports is None else endpoint_ports:
        services.ports = PortListeners(app, urlsplit(base_url).hostname or "127.0.0.1", services.addresses,
                                       endpoint_service.ports)
    return app


LEADERSHIP_LOST_EXIT = 75  # EX_TEMPFAIL: start it again
_HTTP_NAMES = {400: "InvalidInput", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "InvalidInput",
               413: "PayloadTooLarge", 429: "TooManyRequests"}


def invalid_input(exc: RequestValidationError) -> InvalidInput:
    """A body or query pydantic rejected, as InvalidInput naming the first wrong field."""
    first = exc.errors()[0] if exc.errors() else {}
    field = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    message = f"{field}: {first.get('msg', 'invalid value')}" if field else str(first.get("msg", "invalid body"))
    return InvalidInput(message, field=field)
