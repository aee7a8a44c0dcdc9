"""`forgeflow job`: fine-tuning jobs - create, list, show, stream, cancel."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from forgeflow.cli.common import JsonOpt, client, command, console, kv, print_json, table
from forgeflow.errors import InvalidInput

app = typer.Typer(help="Fine-tuning jobs.", no_args_is_help=True)

FINAL = ("Completed", "Failed", "Canceled")


def _abs(p: Path | None) -> str | None:
    return str(p.expanduser().resolve()) if p else None


@app.command("create")
@command
def create(
    type: str = typer.Option("finetuning", "--type", help="Job type (finetuning)."),
    model: str = typer.Option(..., "--model", help="Base model: catalog name, folder, or registered NAME:VERSION."),
    training_data: Path = typer.Option(..., "--training-data", help="Training chat JSONL."),
    validation_data: Path = typer.Option(None, "--validation-data", help="Validation chat JSONL."),
    set_: list[str] = typer.Option(None, "--set", help="A hyperparameter, NAME=VALUE (repeatable), e.g. learning_rate=2e-4."),
    name: str = typer.Option(None, "--name", help="Display name."),
    stream_: bool = typer.Option(False, "--stream", help="Follow the job until it ends."),
    json_out: bool = JsonOpt,
) -> None:
    """Queue a LoRA chat-completion fine-tuning job."""
    from forgeflow.training.hyperparams import parse_set_options

    if type != "finetuning":
        raise InvalidInput(f"--type {type!r}: only 'finetuning' exists")
    body = {"type": type, "model": model, "training_data": _abs(training_data), "validation_data": _abs(validation_data),
            "hyperparameters": parse_set_options(set_ or []), "name": name}
    job = client().post("/api/jobs", body)
    if stream_:
        if not json_out:
            console.print(f"job [bold]{job['id']}[/] queued")
        job = follow(job["id"], quiet=json_out)
    if json_out:
        print_json(job)
    elif not stream_:
        console.print(f"job [bold]{job['id']}[/] {job['status']} - follow it with: forgeflow job stream {job['id']}")
    if job["status"] in ("Failed", "Canceled"):
        raise typer.Exit(1)


def follow(job_id: str, *, quiet: bool = False, show_logs: bool = False) -> dict:
    """Show a progress bar until the job ends; returns the final job."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    c = client()
    offset = 0
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), TextColumn("{task.fields[loss]}"), console=console, disable=quiet,
                  transient=False) as bar:
        task = bar.add_task(f"{job_id} Queued", total=None, loss="")
        while True:
            job = c.get(f"/api/jobs/{job_id}")
            prog = job.get("progress") or {}
            metrics = c.get(f"/api/jobs/{job_id}/metrics")
            loss = ""
            for m in metrics[::-1]:
                if "train_loss" in m:
                    loss = f"train_loss {m['train_loss']:.4f}"
                    break
            evals = [m for m in metrics if "eval_loss" in m]
            if evals:
                loss += f"  eval_loss {evals[-1]['eval_loss']:.4f}"
            bar.update(task, description=f"{job_id} {job['status']}", total=prog.get("max_steps") or None,
                       completed=prog.get("step") or 0, loss=loss)
            if show_logs and not quiet:
                logs = c.get(f"/api/jobs/{job_id}/logs", params={"offset": offset})
                offset = logs["next_offset"]
                if logs["text"]:
                    bar.console.print(logs["text"].rstrip(), markup=False, highlight=False)
            if job["status"] in FINAL:
                if job["status"] == "Completed" and prog.get("max_steps"):
                    bar.update(task, completed=prog["max_steps"])
                break
            time.sleep(1.0)
    if not quiet:
        colour = {"Completed": "green", "Failed": "red", "Canceled": "yellow"}[job["status"]]
        console.print(f"job {job_id} [{colour}]{job['status']}[/]" + (f": {job['error']}" if job.get("error") else ""))
    return job


@app.command("stream")
@command
def stream(job_id: str = typer.Argument(help="Job id or name."), logs: bool = typer.Option(False, help="Print the worker log too."),
           json_out: bool = JsonOpt) -> None:
    """Follow a job with a progress bar until it ends."""
    job = follow(job_id, quiet=json_out, show_logs=logs)
    if json_out:
        print_json(job)
    if job["status"] != "Completed":
        raise typer.Exit(1)


@app.command("list")
@command
def list_(json_out: bool = JsonOpt) -> None:
    """All jobs, newest first."""
    jobs = client().get("/api/jobs")
    if json_out:
        print_json(jobs)
        return
    for j in jobs:
        p = j.get("progress") or {}
        j["steps"] = f"{p.get('step', 0)}/{p.get('max_steps', '?')}" if p else ""
        m = j.get("metrics") or {}
        j["train_loss"] = f"{m['train_loss']:.4f}" if isinstance(m.get("train_loss"), (int, float)) else ""
        j["eval_loss"] = f"{m['eval_loss']:.4f}" if isinstance(m.get("eval_loss"), (int, float)) else ""
    table(jobs, [("id", "id"), ("name", "name"), ("status", "status"), ("base_model", "model"), ("steps", "steps"),
                 ("train_loss", "train loss"), ("eval_loss", "eval loss"), ("created_at", "created")])


@app.command("show")
@command
def show(job_id: str = typer.Argument(help="Job id or name."), json_out: bool = JsonOpt) -> None:
    """Status, settings, losses, outputs and the log tail of a job."""
    c = client()
    job = c.get(f"/api/jobs/{job_id}")
    job["metrics_history"] = c.get(f"/api/jobs/{job_id}/metrics")
    if json_out:
        print_json(job)
        return
    kv(job, ["id", "name", "status", "base_model", "training_data", "validation_data", "created_at", "started_at",
             "finished_at", "error", "progress", "metrics", "outputs", "mlflow_run_id"])
    console.print("[bold]hyperparameters[/]:", job["hyperparameters"], highlight=False)
    hist = [m for m in job["metrics_history"] if "train_loss" in m or "eval_loss" in m]
    if hist:
        table(hist[-15:], [("step", "step"), ("train_loss", "train loss"), ("eval_loss", "eval loss"), ("learning_rate", "lr")],
              title="losses (latest)")
    text = c.get(f"/api/jobs/{job['id']}/logs")["text"]
    if text:
        console.print("[bold]log tail[/]:")
        console.print("\n".join(text.rstrip().splitlines()[-10:]), markup=False, highlight=False)


@app.command("cancel")
@command
def cancel(job_id: str = typer.Argument(help="Job id or name."), json_out: bool = JsonOpt) -> None:
    """Ask a queued or running job to stop; it ends Canceled with its logs kept."""
    job = client().post(f"/api/jobs/{job_id}/cancel")
    print_json(job) if json_out else console.print(f"job {job['id']} {job['status']}")
