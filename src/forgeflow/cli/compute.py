"""`forgeflow compute`: compute targets jobs and deployments run on - list, show (a Ray cluster's nodes, live),
create, update, and the Ray autoscaler config that launches a target's cluster."""

from __future__ import annotations

import sys

import typer
import yaml
from rich.markup import escape

from forgeflow.cli.common import JsonOpt, client, command, console, err_console, kv, print_json, table
from forgeflow.names import url_path

app = typer.Typer(help="Compute targets: this machine (local) or a Ray cluster (ray), where fine-tuning jobs and "
                       "deployments run.", no_args_is_help=True)

COLUMNS = [("name", "name"), ("type", "type"), ("address", "address"), ("max_concurrent_jobs", "max jobs"),
           ("running_jobs", "running"), ("queued_jobs", "queued"), ("min_nodes", "min nodes"),
           ("max_nodes", "max nodes"), ("idle_time_before_scale_down", "idle s"), ("cluster_summary", "cluster")]
SETTINGS = ["name", "type", "address", "size", "storage", "max_concurrent_jobs", "running_jobs", "queued_jobs",
            "min_nodes", "max_nodes", "idle_time_before_scale_down", "description", "created_at"]
NODE_COLUMNS = [("node", "node"), ("role", "role"), ("node_type", "type"), ("state", "state"), ("ip", "ip"),
                ("cpus", "CPUs free/total"), ("gpus", "GPUs free/total"), ("memory", "memory GiB"),
                ("runs", "runs"), ("since", "since")]

NameOpt = typer.Option(..., "--name", help="Target name (letters, digits, '.', '_', '-').")
AddressOpt = typer.Option(None, "--address", help=(
    "ray targets: the Ray cluster's GCS address (head:6379, what `ray start --address` takes), ray://head:10001, "
    "the dashboard URL http://head:8265, or auto (the cluster this server's machine belongs to). forgeflow finds "
    "the job-submission endpoint itself."))
SizeOpt = typer.Option(None, "--size", help=(
    "ray targets: the node type work runs on (a node type of the cluster's autoscaler config; "
    "`compute cluster-config` names its worker type after it)."))
StorageOpt = typer.Option(None, "--storage", help=(
    "ray targets: an absolute directory every node mounts, for job folders and checkpoints "
    "(default: the workspace's artifacts folder, which must then be shared with the nodes)."))
MinOpt = ("--min-instances", "--min-nodes")
MinHelp = "Nodes kept up when idle (ray targets: the worker node type's min_workers)."
MaxOpt = ("--max-instances", "--max-nodes")
MaxHelp = "Most nodes the cluster scales to (ray targets: the worker node type's max_workers)."
IdleHelp = "Idle seconds before a node is released (ray targets: the autoscaler's idle timeout)."


def cluster_summary(row: dict) -> str:
    """One line for a ray target's cluster, as `compute list` reports it."""
    cluster = row.get("cluster")
    if not cluster:
        return ""
    if not cluster["reachable"]:
        return "unreachable"
    text = f"{cluster['nodes_alive']} nodes ({cluster['workers_alive']} workers), {_num(cluster['cpus'])} CPUs"
    if cluster["cpus_free"] is not None:
        text += f" ({_num(cluster['cpus_free'])} free)"
    if cluster["gpus"]:
        text += f", {_num(cluster['gpus'])} GPUs"
    if cluster["pending"]:
        text += f", {cluster['pending']} coming up"
    return text


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _free_total(node: dict, key: str) -> str:
    total = node["resources"].get(key, 0)
    free = None if node["available"] is None else node["available"].get(key, 0)
    return f"{_num(free)}/{_num(total)}" if total or free else "0"


def node_rows(nodes: list[dict]) -> list[dict]:
    rows = []
    for node in nodes:
        runs = [f"job {j}" for j in node["jobs"]] + list(node["actors"])
        if node["other_actors"]:
            runs.append(f"+{node['other_actors']} other actors")
        memory = node["resources"].get("memory")
        rows.append(node | {
            "node": node["node_id"][:12], "cpus": _free_total(node, "CPU"), "gpus": _free_total(node, "GPU"),
            "memory": "" if memory is None else f"{memory / 2**30:.1f}", "runs": ", ".join(runs),
            "since": node["ended_at"] if node["state"] != "ALIVE" else node["started_at"]})
    return rows


def print_cluster(cluster: dict | None) -> None:
    if cluster is None:
        return
    if not cluster["reachable"]:
        console.print(f"[bold red]cluster unreachable:[/] {escape(cluster['error'])}", highlight=False, soft_wrap=True)
        return
    table(node_rows(cluster["nodes"]), NODE_COLUMNS, title="nodes")
    for pending in cluster["pending"]:
        where = f" ({pending['node']})" if pending["node"] else ""
        console.print(f"coming up: a {escape(str(pending['node_type']))} node{escape(where)}, {pending['state']}",
                      highlight=False)
    if cluster["autoscaler_error"]:
        console.print(f"[yellow]autoscaler:[/] {escape(cluster['autoscaler_error'])}", highlight=False, soft_wrap=True)


def warn_unreachable(row: dict) -> None:
    cluster = row.get("cluster")
    if cluster and not cluster["reachable"]:
        err_console.print(f"[yellow]warning:[/] {escape(cluster['error'])}; the target is saved: check the cluster, "
                          f"then see `forgeflow compute show {escape(row['name'])}`", highlight=False, soft_wrap=True)


@app.command("list")
@command
def list_(json_out: bool = JsonOpt) -> None:
    """Every compute target with its running and queued jobs, and each Ray cluster's nodes and CPUs, live."""
    rows = client().get("/api/compute")
    print_json(rows) if json_out else table([r | {"cluster_summary": cluster_summary(r)} for r in rows], COLUMNS)


@app.command("show")
@command
def show(name: str = typer.Argument("local", help="Target name."), json_out: bool = JsonOpt) -> None:
    """One compute target, its load and, for a Ray cluster, its nodes live: state, resources, what runs on each,
    and nodes the autoscaler is bringing up."""
    row = client().get(url_path("api", "compute", name))
    if json_out:
        return print_json(row)
    kv(row, [k for k in SETTINGS if row.get(k) is not None])
    print_cluster(row.get("cluster"))


@app.command("create")
@command
def create(
    name: str = NameOpt,
    type: str = typer.Option("local", "--type", help="local (this machine) or ray (a Ray cluster at --address)."),
    address: str = AddressOpt,
    size: str = SizeOpt,
    storage: str = StorageOpt,
    max_concurrent_jobs: int = typer.Option(None, "--max-concurrent-jobs",
                                            help="Jobs that may run at once (default 1)."),
    min_nodes: int = typer.Option(None, *MinOpt, help=MinHelp + " Default 0."),
    max_nodes: int = typer.Option(None, *MaxOpt, help=MaxHelp + " Default 1."),
    idle_time_before_scale_down: int = typer.Option(None, "--idle-time-before-scale-down",
                                                    help=IdleHelp + " Default 120."),
    description: str = typer.Option(None, "--description", help="Free text."),
    json_out: bool = JsonOpt,
) -> None:
    """Create a compute target; jobs choose it with `job create --compute NAME`, deployments with
    `online-deployment create --compute NAME`. A ray target whose cluster does not answer is saved with a warning."""
    body = {"name": name, "type": type, "address": address, "size": size, "storage": storage,
            "max_concurrent_jobs": max_concurrent_jobs, "min_nodes": min_nodes, "max_nodes": max_nodes,
            "idle_time_before_scale_down": idle_time_before_scale_down, "description": description}
    row = client().post("/api/compute", {k: v for k, v in body.items() if v is not None})
    if json_out:
        return print_json(row)
    where = f" at {row['address']}" if row["address"] else ""
    cluster = f": {cluster_summary(row)}" if row.get("cluster", {}) and row["cluster"]["reachable"] else ""
    console.print(f"[green]created[/] compute {escape(row['name'])} ({row['type']}{escape(where)}, max "
                  f"{row['max_concurrent_jobs']} concurrent jobs){escape(cluster)}", highlight=False)
    warn_unreachable(row)


@app.command("update")
@command
def update(
    name: str = typer.Option(..., "--name", help="Target name, e.g. local."),
    address: str = AddressOpt,
    size: str = SizeOpt,
    storage: str = StorageOpt,
    max_concurrent_jobs: int = typer.Option(None, "--max-concurrent-jobs", help="Jobs that may run at once."),
    min_nodes: int = typer.Option(None, *MinOpt, help=MinHelp),
    max_nodes: int = typer.Option(None, *MaxOpt, help=MaxHelp),
    idle_time_before_scale_down: int = typer.Option(None, "--idle-time-before-scale-down", help=IdleHelp),
    description: str = typer.Option(None, "--description", help="Free text."),
    clear: list[str] = typer.Option(None, "--clear", metavar="FIELD", help=(
        "Clear a field: size (jobs run on any node), storage (back to the workspace's artifacts folder) or "
        "description. Repeat for several.")),
    json_out: bool = JsonOpt,
) -> None:
    """Change a target's limits, scale settings or address; queued jobs start at once when the limit rises."""
    body = {"address": address, "size": size, "storage": storage, "max_concurrent_jobs": max_concurrent_jobs,
            "min_nodes": min_nodes, "max_nodes": max_nodes, "idle_time_before_scale_down": idle_time_before_scale_down,
            "description": description}
    body = {k: v for k, v in body.items() if v is not None} | {k: None for k in clear or ()}
    row = client().patch(url_path("api", "compute", name), body)
    if json_out:
        return print_json(row)
    console.print(f"[green]updated[/] compute {escape(row['name'])} (max {row['max_concurrent_jobs']} concurrent "
                  f"jobs, {row['min_nodes']}-{row['max_nodes']} nodes)", highlight=False)
    warn_unreachable(row)


@app.command("cluster-config")
@command
def cluster_config(
    name: str = typer.Argument(..., help="A ray target's name."),
    provider: str = typer.Option(..., "--provider", help=(
        "aws, gcp or azure (a cluster config for Ray's VM launcher, `ray up FILE`) or kuberay (a RayCluster "
        "manifest, `kubectl apply -f FILE`).")),
    json_out: bool = JsonOpt,
) -> None:
    """Print the config that launches a ray target's cluster with Ray's autoscaler, its scale settings taken from
    the target (min/max nodes -> the worker type's min/max workers, idle time -> the idle timeout). Values forgeflow
    cannot know (machine types, images, regions, the shared volume) are `<FILL IN: ...>`: fill them in first."""
    answer = client().get(url_path("api", "compute", name, "cluster-config"), params={"provider": provider})
    if json_out:
        return print_json(answer)
    use = "kubectl apply -f FILE (needs the KubeRay operator)" if provider == "kuberay" else "ray up FILE"
    header = [f"Ray cluster for forgeflow compute target {answer['compute']!r} ({provider}): {use}",
              f"Then: forgeflow compute update --name {answer['compute']} --address <the head's GCS address>"]
    if answer["placeholders"]:
        header += ["Fill in every <FILL IN: ...> value first:"] + [f"  {p}" for p in answer["placeholders"]]
    sys.stdout.write("".join(f"# {line}\n" for line in header))
    sys.stdout.write(yaml.safe_dump(answer["config"], sort_keys=False, width=120))
