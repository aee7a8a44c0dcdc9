"""`forgeflow online-endpoint` and `forgeflow online-deployment`, shaped like `az ml`."""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

import typer

from forgeflow.cli.common import JsonOpt, client, command, console, kv, print_json, table
from forgeflow.errors import InvalidInput, NotFound
from forgeflow.names import parse_assignments, url_path
from forgeflow.store.states import DeploymentState

endpoint_app = typer.Typer(help="Online endpoints: scoring URI, keys, traffic across deployments.", no_args_is_help=True)
deployment_app = typer.Typer(help="Deployments of a model behind an online endpoint.", no_args_is_help=True)

NameOpt = typer.Option(..., "--name", "-n", help="Endpoint name.")
AllowedUsersOpt = typer.Option(None, "--allowed-users", help="USER,USER...: with --auth-mode token, these users' "
                               "personal access tokens may call the endpoint too (anyone else's is refused, 403).")
EndpointSetOpt = typer.Option(None, "--set", help="FIELD=VALUE: port=PORT gives the endpoint a port of its own (in "
                              "the servers' --endpoint-ports, 9000-9999 by default), on which every server also "
                              "listens, so http://HOST:PORT/score is its scoring URL with the path exactly /score, "
                              "as Azure's (port=null: none).")
ENDPOINT_SETTABLE = ("port",)  # the endpoint's fields that have no option of their own


def _users(names: str | None) -> list[str] | None:
    return None if names is None else [n.strip() for n in names.split(",") if n.strip()]


@endpoint_app.command("create")
@command
def ep_create(name: str = NameOpt,
              auth_mode: str = typer.Option("key", help="key (primary and secondary keys) or token (expiring tokens)."),
              description: str = typer.Option(None, help="Free text."),
              max_body_bytes: int = typer.Option(None, "--max-body-bytes", help="Largest request body; 413 past it."),
              allowed_users: str = AllowedUsersOpt,
              sets: list[str] = EndpointSetOpt,
              json_out: bool = JsonOpt) -> None:
    """Create an endpoint with a primary and a secondary key (or signed tokens)."""
    ep = client().post("/api/endpoints", {"name": name, "auth_mode": auth_mode, "description": description,
                                          "max_body_bytes": max_body_bytes,
                                          "allowed_users": _users(allowed_users)} | _endpoint_sets(sets))
    if json_out:
        print_json(ep)
        return
    console.print(f"[green]created[/] endpoint {ep['name']}: {ep['scoring_uri']}")
    if ep.get("port_scoring_uri"):
        console.print(f"also at {ep['port_scoring_uri']}")


def _endpoint_sets(items: list[str] | None) -> dict:
    """An endpoint's `--set FIELD=VALUE` pairs, as body fields."""
    sets = parse_sets(items)
    for key in sets:
        if key not in ENDPOINT_SETTABLE:
            raise InvalidInput(f"--set {key}: not an endpoint field --set sets; settable are "
                               f"{', '.join(ENDPOINT_SETTABLE)} (the others have options of their own)", field=key)
    return sets


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
    """Scoring URI (and the Azure-style port_scoring_uri and host_scoring_uri), traffic, state and deployments of an
    endpoint."""
    ep = client().get(url_path("api", "endpoints", name))
    print_json(ep) if json_out else kv(ep)


@endpoint_app.command("update")
@command
def ep_update(name: str = NameOpt,
              traffic: list[str] = typer.Option(None, "--traffic", help="DEPLOYMENT=PERCENT ..., totalling 0 or 100."),
              mirror_traffic: list[str] = typer.Option(None, "--mirror-traffic",
                                                       help="DEPLOYMENT=PERCENT (at most 50) of live traffic copied there."),
              max_body_bytes: int = typer.Option(None, "--max-body-bytes", help="Largest request body; 413 past it."),
              description: str = typer.Option(None, help="Free text."),
              auth_mode: str = typer.Option(None, "--auth-mode", help="Switch to key or token auth: both keys are "
                                            "replaced, so no credential of the old mode keeps working."),
              allowed_users: str = AllowedUsersOpt,
              clear_allowed_users: bool = typer.Option(False, "--clear-allowed-users",
                                                       help="No user's personal token may call the endpoint."),
              sets: list[str] = EndpointSetOpt,
              json_out: bool = JsonOpt) -> None:
    """Change the traffic split (--traffic blue=90 green=10), the mirror, the body limit, the auth mode, the
    users whose personal tokens may call it, or its own port (--set port=9001)."""
    body: dict = {"description": description, "max_body_bytes": max_body_bytes, "auth_mode": auth_mode}
    body |= _endpoint_sets(sets)
    if allowed_users is not None and clear_allowed_users:
        raise InvalidInput("give --allowed-users or --clear-allowed-users, not both", field="allowed_users")
    if allowed_users is not None or clear_allowed_users:
        body["allowed_users"] = _users(allowed_users)
    if traffic:
        body["traffic"] = _percentages(traffic, "--traffic")
    if mirror_traffic:
        body["mirror_traffic"] = _percentages(mirror_traffic, "--mirror-traffic")
    ep = client().patch(url_path("api", "endpoints", name), body)
    if json_out:
        print_json(ep)
    else:
        console.print(f"endpoint {name} traffic: {ep['traffic']} mirror: {ep['mirror_traffic']}"
                      f" auth: {ep['auth_mode']}" + (f" port: {ep['port']}" if ep.get("port") else ""))
        if auth_mode:
            console.print(f"new credentials: forgeflow online-endpoint get-credentials --name {name}")


def _percentages(items: list[str], flag: str) -> dict[str, int]:
    split: dict[str, int] = {}
    # `--traffic "blue=90 green=10"`, as az ml writes it, holds several in one item
    for k, v in parse_assignments([pair for item in items for pair in item.split()], flag, "blue=90").items():
        if not v.strip().isdigit():
            raise InvalidInput(f"{flag} {k}={v}: the percentage must be a whole number")
        split[k] = int(v)
    return split


def parse_sets(items: list[str] | None) -> dict:
    """`--set a.b=value` pairs; a value that parses as JSON (numbers, true, objects) is taken as such."""
    return {k: _json_or_text(v)
            for k, v in parse_assignments(items, "--set", "request_settings.request_timeout_ms=5000").items()}


def _json_or_text(value: str):
    try:
        return json.loads(value)
    except ValueError:
        return value


@endpoint_app.command("delete")
@command
def ep_delete(name: str = NameOpt, yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."), json_out: bool = JsonOpt) -> None:
    """Delete an endpoint, stopping its deployments."""
    if not yes and not json_out and not typer.confirm(f"Delete endpoint {name} and its deployments?", default=True):
        raise typer.Exit(1)
    out = client().delete(url_path("api", "endpoints", name))
    print_json(out) if json_out else console.print(f"deleted endpoint {name}")


@endpoint_app.command("get-credentials")
@command
def ep_credentials(name: str = NameOpt, json_out: bool = JsonOpt) -> None:
    """The endpoint's primary and secondary keys, or a fresh expiring token (token auth)."""
    keys = client().get(url_path("api", "endpoints", name, "credentials"))
    print_json(keys) if json_out else kv(keys)


@endpoint_app.command("regenerate-keys")
@command
def ep_regenerate(name: str = NameOpt,
                  key_type: str = typer.Option("primary", "--key-type", help="primary or secondary."),
                  json_out: bool = JsonOpt) -> None:
    """Replace the primary or secondary key; the old one fails at once."""
    keys = client().post(url_path("api", "endpoints", name, "regenerate-keys"), {"key_type": key_type})
    print_json(keys) if json_out else console.print(f"regenerated the {key_type} key of {name}")


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
    creds = c.get(url_path("api", "endpoints", name, "credentials"))
    key = creds.get("primary_key") or creds["access_token"]
    out = c.score(name, body, key=key, deployment=deployment_name)
    print_json(out) if json_out else console.print(out.get("output", out) if isinstance(out, dict) else out, markup=False)


DepName = typer.Option(..., "--name", "-n", help="Deployment name, e.g. blue.")
EpName = typer.Option(..., "--endpoint-name", "-e", help="Endpoint name.")


@deployment_app.command("create")
@command
def dep_create(name: str = DepName, endpoint_name: str = EpName,
               model: list[str] = typer.Option(None, "--model", help="Registered NAME:VERSION, or a base model "
                                               "name. NAME@ALIAS (champion) deploys the version the alias names "
                                               "now: the deployment stays on it when the alias moves. Repeat it to "
                                               "serve several LoRA fine-tunes of one base model on one deployment "
                                               "(a request's `model` picks one)."),
               flow: Path = typer.Option(None, "--flow", help="Serve a flow folder (flow.dag.yaml) instead of a model; "
                                                              "/score then takes the flow's inputs."),
               instance_count: int = typer.Option(None, "--instance-count", help="Model-server processes (default 1; "
                                                  "with autoscaling, max(scale_settings.min_instances, 1))."),
               runtime: str = typer.Option("transformers", "--runtime", help="Serving runtime."),
               compute: str = typer.Option("local", "--compute", help="Compute target the instances run on: local "
                                           "(this machine) or a ray target, which places each instance on a "
                                           "cluster node (see: forgeflow compute list)."),
               instance_cpus: float = typer.Option(None, "--instance-cpus", help="CPUs each instance reserves on its "
                                                   "node (cluster targets; default 1; 0.5 shares one)."),
               instance_gpus: float = typer.Option(None, "--instance-gpus", help="GPUs each instance reserves and "
                                                   "runs its model on (cluster targets; default 0)."),
               instance_memory: int = typer.Option(None, "--instance-memory", help="MiB of memory each instance "
                                                   "reserves on its node (cluster targets; default none)."),
               all_traffic: bool = typer.Option(False, "--all-traffic", help="Send 100% of the endpoint's traffic here once ready."),
               sets: list[str] = typer.Option(None, "--set", help="FIELD=VALUE, e.g. request_settings.request_timeout_ms=5000, "
                                                                 "liveness_probe.period=2, resources.cpus=2, "
                                                                 "or autoscaling: "
                                                                 "scale_settings.type=target_utilization "
                                                                 "scale_settings.min_instances=0 "
                                                                 "scale_settings.max_instances=3, "
                                                                 "gguf_type=q8_0 (runtime llamacpp: f16, q8_0 or "
                                                                 "q4_k_m, the default)."),
               no_wait: bool = typer.Option(False, "--no-wait", help="Return at once instead of waiting until it is ready."),
               json_out: bool = JsonOpt) -> None:
    """Deploy a model (or a flow) to an endpoint; waits until its instances answer."""
    if bool(model) == bool(flow):
        raise InvalidInput("give exactly one of --model or --flow")
    c = client()
    body: dict = {"name": name, "model": _models(model), "flow": str(flow.expanduser().resolve()) if flow else None,
                  "instance_count": instance_count, "runtime": runtime, "compute": compute}
    for path, value in parse_sets(sets).items():
        top, _, sub = path.partition(".")
        if path == "gguf_type":
            body["gguf_type"] = value
            continue
        if top not in ("request_settings", "liveness_probe", "readiness_probe", "scale_settings", "resources") \
                or not sub:
            raise InvalidInput(f"--set {path}: at create time set request_settings.*, liveness_probe.*, "
                               "readiness_probe.*, scale_settings.*, resources.* or gguf_type; other fields have "
                               "their own options")
        body.setdefault(top, {})[sub] = value
    for key, value in (("cpus", instance_cpus), ("gpus", instance_gpus), ("memory_mb", instance_memory)):
        if value is not None:
            body.setdefault("resources", {})[key] = value
    dep = c.post(url_path("api", "endpoints", endpoint_name, "deployments"), body)
    if not no_wait:
        dep = wait_ready(endpoint_name, name, quiet=json_out)
    if all_traffic and dep["provisioning_state"] == DeploymentState.SUCCEEDED:
        c.patch(url_path("api", "endpoints", endpoint_name), {"traffic": {name: 100}})
    _report(dep, json_out)


def _models(model: list[str] | None) -> str | list[str] | None:
    """One --model as the string it is; several as the list of fine-tunes to serve on their base."""
    if not model:
        return None
    return model[0] if len(model) == 1 else list(model)


def wait_ready(endpoint: str, name: str, *, quiet: bool = False, timeout_s: float = 900) -> dict:
    c = client()
    deadline = time.monotonic() + timeout_s
    with console.status(f"starting deployment {name} ...", spinner="dots") if not quiet else nullcontext():
        while True:
            dep = c.get(url_path("api", "endpoints", endpoint, "deployments", name))
            settled = dep["provisioning_state"] in (DeploymentState.SUCCEEDED, DeploymentState.FAILED)
            if settled or time.monotonic() > deadline:
                return dep
            time.sleep(0.5)


@deployment_app.command("list")
@command
def dep_list(endpoint_name: str = EpName, json_out: bool = JsonOpt) -> None:
    """Deployments of an endpoint."""
    rows = client().get(url_path("api", "endpoints", endpoint_name, "deployments"))
    if json_out:
        print_json(rows)
        return
    for r in rows:
        if isinstance(r["model"], list):
            r["model"] = ", ".join(r["model"])
        r["ready"] = f"{sum(1 for i in r['instances'] if i['ready'])}/{r['instance_count']}" + (
            " (scaled to zero)" if r["instance_count"] == 0 else "")
    table(rows, [("name", "name"), ("model", "model"), ("provisioning_state", "state"), ("ready", "ready"),
                 ("runtime", "runtime"), ("compute", "compute")])


@deployment_app.command("show")
@command
def dep_show(name: str = DepName, endpoint_name: str = EpName, json_out: bool = JsonOpt) -> None:
    """A deployment's model, state, settings and instances, with where each runs (its node, on a cluster)."""
    dep = client().get(url_path("api", "endpoints", endpoint_name, "deployments", name))
    print_json(dep) if json_out else kv(dep)


@deployment_app.command("update")
@command
def dep_update(name: str = DepName, endpoint_name: str = EpName,
               sets: list[str] = typer.Option(None, "--set", help="FIELD=VALUE, any field: model=NAME:2, "
                                              "instance_count=2, request_settings.max_concurrent_requests_per_instance=4, "
                                              "scale_settings.max_instances=3, compute=NAME, resources.cpus=2, "
                                              "gguf_type=q8_0, ..."),
               model: list[str] = typer.Option(None, "--model", help="The model(s) to serve instead, as on create: "
                                               "repeat it for several fine-tunes of one base (the list replaces "
                                               "the one served, e.g. to add an adapter)."),
               no_wait: bool = typer.Option(False, "--no-wait", help="Return at once instead of waiting for the roll-out."),
               json_out: bool = JsonOpt) -> None:
    """Change a deployment; new instances are ready before old ones stop, so no request is dropped."""
    changes = parse_sets(sets)
    if model:
        if "model" in changes:
            raise InvalidInput("give the model once: --model, or --set model=...", field="model")
        changes["model"] = _models(model)
    if not changes:
        raise InvalidInput("nothing to update: pass --set FIELD=VALUE or --model", field="set")
    dep = client().patch(url_path("api", "endpoints", endpoint_name, "deployments", name), {"set": changes})
    if not no_wait:
        dep = wait_ready(endpoint_name, name, quiet=json_out)
    _report(dep, json_out)


def _report(dep: dict, json_out: bool) -> None:
    """A deployment's state after create or update; exit 1 when it failed."""
    if json_out:
        print_json(dep)
    else:
        console.print(f"deployment {dep['name']} on {dep['endpoint_name']}: {dep['provisioning_state']}"
                      + (f" - {dep['error']}" if dep.get("error") else ""))
    if dep["provisioning_state"] == DeploymentState.FAILED:
        raise typer.Exit(1)


@deployment_app.command("delete")
@command
def dep_delete(name: str = DepName, endpoint_name: str = EpName, json_out: bool = JsonOpt) -> None:
    """Stop and remove a deployment (it must take no traffic)."""
    out = client().delete(url_path("api", "endpoints", endpoint_name, "deployments", name))
    print_json(out) if json_out else console.print(f"deleted deployment {name}")


@deployment_app.command("get-logs")
@command
def dep_logs(name: str = DepName, endpoint_name: str = EpName, lines: int = typer.Option(100, help="Lines per instance."),
             json_out: bool = JsonOpt) -> None:
    """The model-server log of each instance."""
    out = client().get(url_path("api", "endpoints", endpoint_name, "deployments", name, "logs"),
                       params={"lines": lines})
    print_json(out) if json_out else console.print(out["text"], markup=False, highlight=False)
