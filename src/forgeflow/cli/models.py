"""`forgeflow model`: base models (pull) and registered models (create from a job or a folder)."""

from __future__ import annotations

from pathlib import Path

import typer

from forgeflow.cli.common import JsonOpt, client, command, console, kv, print_json, table
from forgeflow.errors import InvalidInput

app = typer.Typer(help="Base models and the model registry.", no_args_is_help=True)


@app.command("pull")
@command
def pull(
    name: str = typer.Argument(help="Catalog name, e.g. smollm2-135m-instruct."),
    force: bool = typer.Option(False, help="Import again even when already present."),
    json_out: bool = JsonOpt,
) -> None:
    """Import a base model into the workspace as a safetensors checkpoint (offline)."""
    with console.status(f"importing {name} ...", spinner="dots"):
        info = client().post("/api/models/pull", {"name": name, "force": force}, timeout=900)
    if json_out:
        print_json(info)
    else:
        console.print(f"[green]ok[/] {info['name']} at {info.get('path')}")


@app.command("list")
@command
def list_(json_out: bool = JsonOpt) -> None:
    """Base models (pulled or not) and every registered model version."""
    rows = client().get("/api/models")
    if json_out:
        print_json(rows)
        return
    for r in rows:
        r["ref"] = r["name"] if r.get("kind") == "base" else f"{r['name']}:{r['version']}"
        r["state"] = ("pulled" if r.get("pulled") else "not pulled") if r.get("kind") == "base" else "registered"
        r["from"] = r.get("source_job") or r.get("base_model") or r.get("source") or ""
    table(rows, [("ref", "model"), ("kind", "kind"), ("state", "state"), ("from", "from"), ("path", "path")])


@app.command("create")
@command
def create(
    name: str = typer.Option(..., "--name", help="Registered model name."),
    from_job: str = typer.Option(None, "--from-job", help="A Completed fine-tuning job to register."),
    path: Path = typer.Option(None, "--path", help="A local Hugging Face (or MLflow) model folder."),
    description: str = typer.Option(None, help="Free text shown with the version."),
    json_out: bool = JsonOpt,
) -> None:
    """Register a new version (1, 2, ...) of a model in the MLflow model registry."""
    if bool(from_job) == bool(path):
        raise InvalidInput("give exactly one of --from-job or --path")
    body = {"name": name, "from_job": from_job, "path": str(path.expanduser().resolve()) if path else None,
            "description": description}
    mv = client().post("/api/models", body)
    print_json(mv) if json_out else console.print(f"[green]registered[/] {mv['name']}:{mv['version']} ({mv['path']})")


@app.command("show")
@command
def show(ref: str = typer.Argument(help="NAME or NAME:VERSION (base models too)."), json_out: bool = JsonOpt) -> None:
    """Show a model, including its `path`."""
    name, _, version = ref.partition(":")
    mv = client().get(f"/api/models/{name}", params={"version": version} if version else None)
    print_json(mv) if json_out else kv(mv)
