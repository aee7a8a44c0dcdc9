"""`forgeflow online-endpoint` and `forgeflow online-deployment`, shaped like `az ml`."""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

import typer

from forgeflow.cli.common import JsonOpt, client, command, console, kv, parse_pairs, print_json, table
from forgeflow.errors import InvalidInput, NotFound

endpoint_app = typer.Typer(help="Online endpoints: scoring URI, keys, traffic across deployments.", no_args_is_help=True)
deployment_app = typer.Typer(help="Deployments of a model behind an online endpoint.", no_args_is_help=True)

NameOpt = typer.Option(..., "--name", "-n", help="Endpoint name.")


@endpoint_app.command("create")
@command
def ep_create(name: str = NameOpt, auth_mode: str = typer.Option("key", help="key"),
              description: str = typer.Option(None), json_out: bool = JsonOpt) -> None:
    """Create an endpoint with a primary and a secondary key."""
    ep = client().post("/api/endpoints", {"name": name, "auth_mode": auth_mode, "description": description})
    print_json(ep) if json_out else console.print(f"[green]created[/] endpoint {ep['name']}: {ep['scoring_uri']}")


@endpoint_app.command("list")
@command
def ep_list(json_out: bool = JsonOpt) -> None:
    """All endpoints."""
    rows = client().get("/api/endpoints")
    if json_out:
        print_json(rows)
        return
    for r in rows:
        r["traffic_s"] = " ".join(f"{k}={v}" for k, v in r["traffic"].items())
    table(rows, [("name", "name"), ("provisioning_state", "state"), ("traffic_s", "traffic"), ("scoring_uri", "scoring uri")])


@endpoint_app.command("show")
@command
def ep_show(name: str = NameOpt, json_out: bool = JsonOpt) -> None:
    """Scoring URI, traffic, state and deployments of an endpoint."""
    ep = client().get(f"/api/endpoints/{name}")
    print_json(ep) if json_out else kv(ep)


@endpoint_app.command("update")
@command
def ep_update(name: str = NameOpt,
              traffic: list[str] = typer.Option(None, "--traffic", help="DEPLOYMENT=PERCENT ..., totalling 0 or 100."),
              json_out: bool = JsonOpt) -> None:
    """Change the traffic split, e.g. --traffic blue=90 green=10."""
    pairs = parse_pairs(traffic, "--traffic")
    split: dict[str, int] = {}
    for k, v in pairs.items():
        if not v.strip().isdigit():
            raise InvalidInput(f"--traffic {k}={v}: the percentage must be a whole number")
        split[k] = int(v)
    ep = client().patch(f"/api/endpoints/{name}", {"traffic": split} if traffic else {})
    print_json(ep) if json_out else console.print(f"endpoint {name} traffic: {ep['traffic']}")


@endpoint_app.command("delete")
@command
def ep_delete(name: str = NameOpt, yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."), json_out: bool = JsonOpt) -> None:
    """Delete an endpoint, stopping its deployments."""
    if not yes and not json_out and not typer.confirm(f"Delete endpoint {name} and its deployments?", default=True):
        raise typer.Exit(1)
    out = client().delete(f"/api/endpoints/{name}")
    print_json(out) if json_out else console.print(f"deleted endpoint {name}")


@endpoint_app.command("get-credentials")
@command
def ep_credentials(name: str = NameOpt, json_out: bool = JsonOpt) -> None:
    """The endpoint's primary and secondary keys."""
    keys = client().get(f"/api/endpoints/{name}/credentials")
    print_json(keys) if json_out else kv(keys)


@endpoint_app.command("invoke")
@command
def ep_invoke(name: str = NameOpt,
              request_file: Path = typer.Option(..., "--request-file", help="JSON body in Azure's scoring format."),
              deployment_name: str = typer.Option(None, "--deployment-name", help="Send to this deployment, whatever the traffic."),
              json_out: bool = JsonOpt) -> None:
    """Send a scoring request through the gateway with the endpoint's key."""
    if not request_file.is_file():
        raise NotFound(f"request file {request_file} does not exist")
    try:
        body = json.loads(request_file.read_text())
    except ValueError as e:
        raise InvalidInput(f"{request_file} is not valid JSON: {e}") from None
    c = client()
    key = c.get(f"/api/endpoints/{name}/credentials")["primary_key"]
    out = c.score(name, body, key=key, deployment=deployment_name)
    print_json(out) if json_out else console.print(out.get("output", out) if isinstance(out, dict) else out, markup=False)


DepName = typer.Option(..., "--name", "-n", help="Deployment name, e.g. blue.")
EpName = typer.Option(..., "--endpoint-name", "-e", help="Endpoint name.")


@deployment_app.command("create")
@command
def dep_create(name: str = DepName, endpoint_name: str = EpName,
               model: str = typer.Option(..., "--model", help="Registered NAME:VERSION, or a base model name."),
               instance_count: int = typer.Option(1, "--instance-count", help="Model-server processes."),
               runtime: str = typer.Option("transformers", "--runtime", help="Serving runtime."),
               all_traffic: bool = typer.Option(False, "--all-traffic", help="Send 100% of the endpoint's traffic here once ready."),
               no_wait: bool = typer.Option(False, "--no-wait", help="Return at once instead of waiting until it is ready."),
               json_out: bool = JsonOpt) -> None:
    """Deploy a model to an endpoint; waits until its instances answer."""
    c = client()
    dep = c.post(f"/api/endpoints/{endpoint_name}/deployments",
                 {"name": name, "model": model, "instance_count": instance_count, "runtime": runtime})
    if not no_wait:
        dep = wait_ready(endpoint_name, name, quiet=json_out)
    if all_traffic and dep["provisioning_state"] == "Succeeded":
        c.patch(f"/api/endpoints/{endpoint_name}", {"traffic": {name: 100}})
    if json_out:
        print_json(dep)
    else:
        console.print(f"deployment {name} on {endpoint_name}: {dep['provisioning_state']}"
                      + (f" - {dep['error']}" if dep.get("error") else ""))
    if dep["provisioning_state"] == "Failed":
        raise typer.Exit(1)


def wait_ready(endpoint: str, name: str, *, quiet: bool = False, timeout_s: float = 900) -> dict:
    c = client()
    deadline = time.monotonic() + timeout_s
    with console.status(f"starting deployment {name} ...", spinner="dots") if not quiet else nullcontext():
        while True:
            dep = c.get(f"/api/endpoints/{endpoint}/deployments/{name}")
            if dep["provisioning_state"] in ("Succeeded", "Failed") or time.monotonic() > deadline:
                return dep
            time.sleep(0.5)


@deployment_app.command("list")
@command
def dep_list(endpoint_name: str = EpName, json_out: bool = JsonOpt) -> None:
    """Deployments of an endpoint."""
    rows = client().get(f"/api/endpoints/{endpoint_name}/deployments")
    if json_out:
        print_json(rows)
        return
    for r in rows:
        r["ready"] = f"{sum(1 for i in r['instances'] if i['ready'])}/{r['instance_count']}"
    table(rows, [("name", "name"), ("model", "model"), ("provisioning_state", "state"), ("ready", "ready"), ("runtime", "runtime")])


@deployment_app.command("show")
@command
def dep_show(name: str = DepName, endpoint_name: str = EpName, json_out: bool = JsonOpt) -> None:
    """A deployment's model, state, instances and settings."""
    dep = client().get(f"/api/endpoints/{endpoint_name}/deployments/{name}")
    print_json(dep) if json_out else kv(dep)


@deployment_app.command("delete")
@command
def dep_delete(name: str = DepName, endpoint_name: str = EpName, json_out: bool = JsonOpt) -> None:
    """Stop and remove a deployment (it must take no traffic)."""
    out = client().delete(f"/api/endpoints/{endpoint_name}/deployments/{name}")
    print_json(out) if json_out else console.print(f"deleted deployment {name}")


@deployment_app.command("get-logs")
@command
def dep_logs(name: str = DepName, endpoint_name: str = EpName, lines: int = typer.Option(100, help="Lines per instance."),
             json_out: bool = JsonOpt) -> None:
    """The model-server log of each instance."""
    out = client().get(f"/api/endpoints/{endpoint_name}/deployments/{name}/logs", params={"lines": lines})
    print_json(out) if json_out else console.print(out["text"], markup=False, highlight=False)
