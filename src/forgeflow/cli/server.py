"""`forgeflow serve`: run the server in the foreground or detached, see its status, stop it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlparse

import typer

from forgeflow.cli.common import JsonOpt, command, console, err_console, print_json
from forgeflow.errors import Conflict, ForgeflowError, ServerUnavailable
from forgeflow.store.home import Paths, server_url

app = typer.Typer(help="Run the forgeflow server (REST API, job runner, deployments, scoring gateway).",
                  invoke_without_command=True)


def _default_host_port() -> tuple[str, int]:
    u = urlparse(server_url())
    return u.hostname or "127.0.0.1", u.port or 8765


def _read_pid(paths: Paths) -> int | None:
    try:
        pid = int(paths.server_pid.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    from forgeflow.processes import pid_alive

    return pid if pid_alive(pid) else None


def _healthy(url: str) -> bool:
    from forgeflow.client import Client

    return Client(url, token="").healthy()


def start_detached(host: str, port: int, timeout_s: float = 90.0, endpoint_domain: str | None = None,
                   endpoint_ports: str | None = None) -> dict:
    """Start a server in the background and wait until it answers."""
    from forgeflow.store.workspace import Workspace

    ws = Workspace.open()
    url = f"http://{host}:{port}"
    if _healthy(url):
        return {"url": url, "pid": _read_pid(ws.paths), "started": False}
    log = open(ws.paths.server_log, "ab")
    domain = [] if endpoint_domain is None else ["--endpoint-domain", endpoint_domain]
    domain += [] if endpoint_ports is None else ["--endpoint-ports", endpoint_ports]
    proc = subprocess.Popen(
        [sys.executable, "-m", "forgeflow.cli.main", "serve", "--host", host, "--port", str(port), *domain],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        env=dict(os.environ, FORGEFLOW_URL=url),
    )
    log.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerUnavailable(f"the server exited with code {proc.returncode}; see {ws.paths.server_log}")
        if _healthy(url):
            return {"url": url, "pid": proc.pid, "started": True, "log": str(ws.paths.server_log)}
        time.sleep(0.3)
    raise ServerUnavailable(f"the server did not answer within {timeout_s:.0f} s; see {ws.paths.server_log}")


@app.callback()
@command
def serve(
    ctx: typer.Context,
    host: str = typer.Option(None, help="Interface to bind (default from FORGEFLOW_URL, else 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (default from FORGEFLOW_URL, else 8765)."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Run in the background and return once it answers."),
    endpoint_domain: str = typer.Option(None, "--endpoint-domain", help="A request whose Host is NAME.DOMAIN is "
                                        "for endpoint NAME, at paths such as /score, as Azure's endpoint hosts "
                                        "(for wildcard DNS or a reverse proxy; default from "
                                        "FORGEFLOW_ENDPOINT_DOMAIN, else localhost; '' turns it off). The "
                                        "server's own host name stays the server's."),
    endpoint_ports: str = typer.Option(None, "--endpoint-ports", help="FIRST-LAST: the ports endpoints may be "
                                       "given (--set port=PORT), on which this server listens (default from "
                                       "FORGEFLOW_ENDPOINT_PORTS, else 9000-9999; keep it clear of the ephemeral "
                                       "ports, 32768-60999 on Linux)."),
    json_out: bool = JsonOpt,
) -> None:
    """Run the server in the foreground (Ctrl-C stops it), or in the background with --detach. It also listens on
    every endpoint's own port (online-endpoint update --set port=PORT) in its --endpoint-ports."""
    if ctx.invoked_subcommand:
        return
    dhost, dport = _default_host_port()
    host, port = host or dhost, port or dport
    from forgeflow.serving.endpoint_hosts import check_domain, check_port_range, describe_ports

    domain = check_domain(endpoint_domain)
    ports = describe_ports(check_port_range(endpoint_ports))
    if detach:
        info = start_detached(host, port, endpoint_domain=domain, endpoint_ports=ports)
        if json_out:
            print_json(info)
        else:
            verb = "Started" if info["started"] else "Already running:"
            console.print(f"{verb} forgeflow server at [bold]{info['url']}[/] (pid {info['pid']})")
            console.print(f"Studio: open [bold]{info['url']}/[/] and sign in with the token from 'forgeflow token show'")
        return
    _run_foreground(host, port, domain, ports)


def _run_foreground(host: str, port: int, endpoint_domain: str, endpoint_ports: str) -> None:
    import logging

    import uvicorn

    from forgeflow.api.app import create_app
    from forgeflow.store.workspace import Workspace

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ws = Workspace.open()
    ws.ensure_mlflow()
    if _healthy(f"http://{host}:{port}"):
        raise Conflict(f"a server already answers at http://{host}:{port}")
    ws.paths.server_pid.write_text(f"{os.getpid()} http://{host}:{port}\n")
    console.print(f"forgeflow server at [bold]http://{host}:{port}[/]; Studio: open [bold]http://{host}:{port}/[/] "
                  "and sign in with the token from 'forgeflow token show'. Ctrl-C stops it.")
    try:
        app = create_app(ws, base_url=f"http://{host}:{port}", endpoint_domain=endpoint_domain,
                         endpoint_port_range=endpoint_ports)
        # proxy_headers off: uvicorn would otherwise take the client's address and scheme from X-Forwarded-* sent
        # by any local client, which would choose its own address for the failed-credential limit.
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=10, proxy_headers=False)
    finally:
        try:
            if _read_pid(ws.paths) in (None, os.getpid()):
                ws.paths.server_pid.unlink(missing_ok=True)
        except OSError:
            pass


@app.command("status")
@command
def status(json_out: bool = JsonOpt) -> None:
    """Say whether a server answers at FORGEFLOW_URL, whether it leads (runs the jobs and the deployments), and
    every server on its database (exit 1 when none answers)."""
    from forgeflow.client import Client

    url = server_url()
    pid = _read_pid(Paths.current())
    try:
        health = Client(url, token="").request("GET", "/api/health", auth=False, timeout=2.0)
    except ForgeflowError:
        health = None
    info: dict = {"url": url, "running": health is not None, "pid": pid,
                  "role": health.get("role") if health else None}
    if health:
        try:
            info["servers"] = Client(url).get("/api/servers")
        except ForgeflowError as e:  # e.g. no token for this server here: its own role is still known
            info["servers_error"] = e.message
    if json_out:
        print_json(info)
    elif health:
        console.print(f"forgeflow server running at [bold]{url}[/]" + (f" (pid {pid})" if pid else "")
                      + f", {info['role']}")
        for srv in info.get("servers", []):
            mark = "leader" if srv["leader"] else "follower" if srv["alive"] else "gone"
            console.print(f"  {srv['url']}  {mark}  pid {srv['pid']} on {srv['host']}, heartbeat {srv['heartbeat_at']}"
                          + ("  (this one)" if srv["this"] else ""))
    else:
        err_console.print(f"no forgeflow server answers at {url}: start one with 'forgeflow serve --detach'")
    if not health:
        raise typer.Exit(1)


@app.command("stop")
@command
def stop(json_out: bool = JsonOpt, timeout: float = typer.Option(30.0, help="Seconds to wait before SIGKILL.")) -> None:
    """Stop the background server of this workspace; its deployments stop with it."""
    paths = Paths.current()
    pid = _read_pid(paths)
    if pid is None:
        if json_out:
            print_json({"stopped": False, "reason": "not running"})
        else:
            console.print("no server of this workspace is running")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    from forgeflow.processes import pid_alive

    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    paths.server_pid.unlink(missing_ok=True)
    print_json({"stopped": True, "pid": pid}) if json_out else console.print(f"stopped forgeflow server (pid {pid})")
