"""`forgeflow compute`: compute targets jobs queue on - list, show, create, update."""

from __future__ import annotations

import typer

from forgeflow.cli.common import JsonOpt, client, command, console, kv, print_json, table

app = typer.Typer(help="Compute targets: where fine-tuning jobs run and how many at once.", no_args_is_help=True)

COLUMNS = [("name", "name"), ("type", "type"), ("max_concurrent_jobs", "max jobs"), ("running_jobs", "running"),
           ("queued_jobs", "queued"), ("min_nodes", "min nodes"), ("max_nodes", "max nodes"),
           ("idle_time_before_scale_down", "idle s"), ("description", "description")]


@app.command("list")
@command
def list_(json_out: bool = JsonOpt) -> None:
    """Every compute target with its running and queued jobs."""
    rows = client().get("/api/compute")
    print_json(rows) if json_out else table(rows, COLUMNS)


@app.command("show")
@command
def show(name: str = typer.Argument("local", help="Target name."), json_out: bool = JsonOpt) -> None:
    """One compute target and its load."""
    row = client().get(f"/api/compute/{name}")
    print_json(row) if json_out else kv(row, [k for k, _ in COLUMNS] + ["created_at"])


@app.command("create")
@command
def create(
    name: str = typer.Option(..., "--name", help="Target name (letters, digits, '.', '_', '-')."),
    type: str = typer.Option("local", "--type", help="local (this machine); ray is planned, not available yet."),
    max_concurrent_jobs: int = typer.Option(1, "--max-concurrent-jobs", help="Jobs that may run at once."),
    min_nodes: int = typer.Option(0, "--min-nodes", help="Nodes kept when idle (cluster targets)."),
    max_nodes: int = typer.Option(1, "--max-nodes", help="Most nodes (cluster targets)."),
    idle_time_before_scale_down: int = typer.Option(120, "--idle-time-before-scale-down",
                                                    help="Idle seconds before a node is released (cluster targets)."),
    description: str = typer.Option(None, "--description", help="Free text."),
    json_out: bool = JsonOpt,
) -> None:
    """Create a compute target; jobs choose it with `job create --compute NAME`."""
    row = client().post("/api/compute", {
        "name": name, "type": type, "max_concurrent_jobs": max_concurrent_jobs, "min_nodes": min_nodes,
        "max_nodes": max_nodes, "idle_time_before_scale_down": idle_time_before_scale_down, "description": description,
    })
    print_json(row) if json_out else console.print(
        f"[green]created[/] compute {row['name']} ({row['type']}, max {row['max_concurrent_jobs']} concurrent jobs)")


@app.command("update")
@command
def update(
    name: str = typer.Option(..., "--name", help="Target name, e.g. local."),
    max_concurrent_jobs: int = typer.Option(None, "--max-concurrent-jobs", help="Jobs that may run at once."),
    min_nodes: int = typer.Option(None, "--min-nodes", help="Nodes kept when idle."),
    max_nodes: int = typer.Option(None, "--max-nodes", help="Most nodes."),
    idle_time_before_scale_down: int = typer.Option(None, "--idle-time-before-scale-down", help="Idle seconds."),
    description: str = typer.Option(None, "--description", help="Free text."),
    json_out: bool = JsonOpt,
) -> None:
    """Change a target's limits; queued jobs start at once when the limit rises."""
    body = {k: v for k, v in {"max_concurrent_jobs": max_concurrent_jobs, "min_nodes": min_nodes, "max_nodes": max_nodes,
                              "idle_time_before_scale_down": idle_time_before_scale_down,
                              "description": description}.items() if v is not None}
    row = client().patch(f"/api/compute/{name}", body)
    print_json(row) if json_out else console.print(
        f"[green]updated[/] compute {row['name']} (max {row['max_concurrent_jobs']} concurrent jobs)")
