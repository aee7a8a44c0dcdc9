"""`forgeflow model`: base models (pull) and the registry - create (from a job or a folder), list, show,
update (description, tags, aliases), archive/restore, download, export (GGUF, safetensors, MLflow), evaluate
(cli/evaluate.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from forgeflow.cli.common import JsonOpt, client, command, console, kv, print_json, table
from forgeflow.cli.evaluate import evaluate
from forgeflow.errors import Conflict, InvalidInput
from forgeflow.names import parse_assignments, parse_model_ref, url_path

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
def list_(include_archived: bool = typer.Option(False, "--include-archived", help="Show archived versions too."),
          json_out: bool = JsonOpt) -> None:
    """Base models (pulled or not) and every registered model version."""
    rows = client().get("/api/models", params={"include_archived": include_archived})
    if json_out:
        print_json(rows)
        return
    for r in rows:
        r["ref"] = r["name"] if r.get("kind") == "base" else f"{r['name']}:{r['version']}"
        if r.get("kind") == "base":
            r["state"] = "pulled" if r.get("pulled") else "not pulled"
        else:
            r["state"] = "archived" if r.get("archived") else "registered"
        r["from"] = r.get("source_job") or r.get("base_model") or r.get("source") or ""
        r["tag_text"] = ", ".join(f"{k}={v}" for k, v in (r.get("tags") or {}).items())
        r["alias_text"] = ", ".join(r.get("aliases") or [])
    table(rows, [("ref", "model"), ("kind", "kind"), ("state", "state"), ("alias_text", "aliases"), ("from", "from"),
                 ("base_model", "base"), ("tag_text", "tags"), ("description", "description")])


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
def show(ref: str = typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS (base models too)."),
         json_out: bool = JsonOpt) -> None:
    """Show a model: path, source job, base model, aliases, tags, description and the settings it was trained with."""
    mv = _get(client(), ref)
    if json_out:
        print_json(mv)
        return
    if "aliases" in mv:
        mv["aliases"] = ", ".join(mv["aliases"]) or None
    kv(mv, [k for k in mv if k not in ("hyperparameters", "tags", "metrics", "evaluation")])
    for key in ("tags", "metrics", "hyperparameters"):
        if mv.get(key):
            label = "settings" if key == "hyperparameters" else key
            console.print(f"[bold]{label}[/]: " + ", ".join(f"{k}={v}" for k, v in mv[key].items()),
                          highlight=False, soft_wrap=True)
    evaluation = mv.get("evaluation")
    if evaluation:  # the newest evaluation: where its rows (the job) and its metrics and result (MLflow) are
        against, run = evaluation.get("baseline") or "no baseline", evaluation.get("mlflow_run_id") or "unknown"
        console.print(f"[bold]evaluation[/]: job {evaluation.get('job')}, against {against}, MLflow run {run}; "
                      + ", ".join(f"{k}={v}" for k, v in (evaluation.get("model_metrics") or {}).items()
                                  if not k.endswith("_ci")), highlight=False, soft_wrap=True)


def _get(c, ref: str) -> dict:
    """A base model or registered version by NAME, NAME:VERSION or NAME@ALIAS (read by the server)."""
    name, version, alias = parse_model_ref(ref)
    return c.get(url_path("api", "models", f"{name}@{alias}" if alias else name),
                 params={"version": version} if version else None)


def _version_path(name: str, version: str) -> str:
    return url_path("api", "models", name, "versions", version)


NameOpt = typer.Option(..., "--name", help="Registered model name.")
VersionOpt = typer.Option(..., "--version", help="Version number.")


@app.command("update")
@command
def update(
    name: str = NameOpt,
    version: str = VersionOpt,
    description: str = typer.Option(None, "--description", help="New description."),
    set_tag: list[str] = typer.Option(None, "--set-tag", help="A tag KEY=VALUE to add or change (repeatable)."),
    remove_tag: list[str] = typer.Option(None, "--remove-tag", help="A tag KEY to remove (repeatable)."),
    set_alias: list[str] = typer.Option(None, "--set-alias", help="An alias to put on this version, e.g. champion "
                                        "(repeatable). An alias names one version: set on another, it moves here. "
                                        "NAME@ALIAS then names this version wherever a model is asked for."),
    remove_alias: list[str] = typer.Option(None, "--remove-alias", help="An alias to take off this version "
                                           "(repeatable)."),
    json_out: bool = JsonOpt,
) -> None:
    """Change a version's description, tags and aliases (MLflow's registered-model aliases)."""
    tags = parse_assignments(set_tag, "--set-tag", "stage=prod")
    if description is None and not tags and not remove_tag and not set_alias and not remove_alias:
        raise InvalidInput("nothing to change: give --description, --set-tag KEY=VALUE, --remove-tag KEY, "
                           "--set-alias ALIAS or --remove-alias ALIAS")
    mv = client().patch(_version_path(name, version), {
        "description": description, "set_tags": tags, "remove_tags": list(remove_tag or []),
        "set_aliases": list(set_alias or []), "remove_aliases": list(remove_alias or [])})
    aliases = f" (aliases: {', '.join(mv['aliases'])})" if mv.get("aliases") else ""
    print_json(mv) if json_out else console.print(f"[green]updated[/] {mv['name']}:{mv['version']}{aliases}")


@app.command("archive")
@command
def archive(name: str = NameOpt, version: str = VersionOpt, json_out: bool = JsonOpt) -> None:
    """Archive a version: hidden from `model list`, new deployments of it refused (running ones stay)."""
    mv = client().post(f"{_version_path(name, version)}/archive")
    print_json(mv) if json_out else console.print(
        f"[yellow]archived[/] {mv['name']}:{mv['version']} (undo with: forgeflow model restore --name {name} --version {version})")


@app.command("restore")
@command
def restore(name: str = NameOpt, version: str = VersionOpt, json_out: bool = JsonOpt) -> None:
    """Bring an archived version back."""
    mv = client().post(f"{_version_path(name, version)}/restore")
    print_json(mv) if json_out else console.print(f"[green]restored[/] {mv['name']}:{mv['version']}")


@app.command("download")
@command
def download(
    name: str = NameOpt,
    version: str = typer.Option(..., "--version", help="Version number, or an alias (champion): the version it names."),
    out: Path = typer.Option(..., "--out", help="Folder to create with the model's files (MLflow model format)."),
    json_out: bool = JsonOpt,
) -> None:
    """Copy a version's model folder from the server into --out, with a progress bar."""
    from forgeflow.cli.download import download_version

    c = client()
    if not version.isdigit():
        version = _get(c, f"{name}@{version}")["version"]
    result = download_version(c, name, version, out.expanduser().resolve(), quiet=json_out, console=console)
    print_json(result) if json_out else console.print(
        f"[green]downloaded[/] {name}:{version} ({result['files']} files, {result['bytes'] / 1e6:.1f} MB) to {result['path']}")


@app.command("export")
@command
def export(
    ref: str = typer.Argument(help="NAME:VERSION or NAME@ALIAS of a registered model (NAME alone: its latest "
                                   "version)."),
    fmt: str = typer.Option(..., "--format", help="gguf (llama.cpp), safetensors (a Hugging Face checkpoint folder) "
                                                   "or mlflow (MLflow's transformers flavor, loads without forgeflow)."),
    quantize: str = typer.Option(None, "--quantize", help="gguf only: f16, q8_0 or q4_k_m (the default: made by llama.cpp's quantizer, so it needs llama-cpp-python; f16 and q8_0 do not)."),
    out: Path = typer.Option(..., "--out", help="Folder to create with the export."),
    json_out: bool = JsonOpt,
) -> None:
    """Export a version for use outside forgeflow: a GGUF for llama.cpp, a safetensors checkpoint, or an MLflow model."""
    from forgeflow.cli.download import download_files

    out = out.expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise Conflict(f"{out} already exists and is not empty: choose another --out or remove it", field="out")
    c = client()
    name, version, _ = parse_model_ref(ref)
    if not version:
        mv = _get(c, ref)
        if mv.get("kind") == "base":
            raise InvalidInput(f"{name} is a base model; export works on registered versions (forgeflow model list)",
                               field="model")
        version = mv["version"]
    with console.status(f"preparing {name}:{version} as {fmt} ...", spinner="dots"):
        params = {"format": fmt, **({"quantize": quantize} if quantize is not None else {})}
        plan = c.get(f"{_version_path(name, version)}/export", params=params, timeout=3600)
    if plan["convert"] == "mlflow":
        _checkpoint_to_mlflow(c, plan, out, quiet=json_out)
    else:
        download_files(c, name, version, plan["files"], out, quiet=json_out, console=console)
    result = {"name": name, "version": version, "format": fmt, "quantize": plan["quantize"], "path": str(out),
              "files": len(plan["files"]), "bytes": plan["total_bytes"]}
    print_json(result) if json_out else console.print(
        f"[green]exported[/] {name}:{version} as {fmt}{' ' + plan['quantize'] if plan['quantize'] else ''} to {out}")


def _checkpoint_to_mlflow(c, plan: dict, out: Path, *, quiet: bool) -> None:
    """A version kept as a bare checkpoint (or in forgeflow's older pyfunc layout): download it, save it here."""
    import tempfile

    from forgeflow.cli.download import download_files
    from forgeflow.registry.mlflow_format import save_chat_model

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        checkpoint = download_files(c, plan["name"], plan["version"], plan["files"], Path(tmp) / "checkpoint",
                                    quiet=quiet, console=console)
        if out.exists():
            out.rmdir()
        with console.status("saving in MLflow format ...", spinner="dots"):
            save_chat_model(checkpoint, out)


app.command("evaluate")(evaluate)
