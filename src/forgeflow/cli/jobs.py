"""`forgeflow job`: fine-tuning jobs - create (flags or a YAML file), list, show, stream, cancel, resume; evaluation
jobs (forgeflow model evaluate) are listed, followed, canceled and resumed here too."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.core import TyperCommand

from forgeflow.cli.common import JsonOpt, client, command, console, kv, print_json, table
from forgeflow.errors import InvalidInput
from forgeflow.names import parse_assignments, url_path
from forgeflow.store.states import JobStatus

app = typer.Typer(help="Fine-tuning jobs.", no_args_is_help=True)


def _abs(p: Path | None) -> str | None:
    return str(p.expanduser().resolve()) if p else None


def _hyperparameter_help() -> str:
    """The `--set` names, group by group, each with its field docstring (what GET /api/hyperparameters shows)."""
    from forgeflow.training.hyperparams import GROUPS

    def spelled(value: object) -> str:  # as --set spells it
        return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)

    lines = ["Hyperparameters, --set NAME=VALUE (shown with their defaults):"]
    for group in GROUPS.values():
        lines.append(f"\n{group.__doc__}:")
        lines += [f"  {name}={spelled(info.default)}  {info.description}" for name, info in group.model_fields.items()]
    return "\n".join(lines)


class _CreateCommand(TyperCommand):
    """`job create`, whose help ends with every hyperparameter (built when asked: it imports pydantic)."""

    def format_help(self, ctx, formatter) -> None:
        self.epilog = _hyperparameter_help()
        super().format_help(ctx, formatter)


@app.command("create", cls=_CreateCommand)
@command
def create(
    file: Path = typer.Option(None, "--file", "-f", help="YAML job file (type, model, training_data, validation_data, "
                              "hyperparameters, method, name, compute); flags below override it."),
    type: str = typer.Option(None, "--type", help="Job type (finetuning)."),
    model: str = typer.Option(None, "--model", help="Base model: catalog name, folder, or registered NAME:VERSION or NAME@ALIAS."),
    training_data: Path = typer.Option(None, "--training-data", help="Training JSONL: chat rows, or preference rows "
                                       "(prompt, chosen, rejected) with --method dpo."),
    validation_data: Path = typer.Option(None, "--validation-data", help="Validation JSONL, shaped as the training data."),
    method: str = typer.Option(None, "--method", help="sft (supervised, the default) or dpo (direct preference "
                               "optimization); the same as --set method=..."),
    set_: list[str] = typer.Option(None, "--set", help="A hyperparameter, NAME=VALUE (repeatable), e.g. learning_rate=2e-4; all are listed below."),
    name: str = typer.Option(None, "--name", help="Display name."),
    compute: str = typer.Option(None, "--compute", help="Compute target to queue on (default local; see: forgeflow compute list)."),
    stream_: bool = typer.Option(False, "--stream", help="Follow the job with a progress bar until it ends."),
    json_out: bool = JsonOpt,
) -> None:
    """Queue a chat-completion fine-tuning job (LoRA by default), supervised or on preferences (--method dpo)."""
    from forgeflow.training.jobfile import job_body

    flags = {"type": type, "model": model, "training_data": _abs(training_data),
             "validation_data": _abs(validation_data), "name": name, "compute": compute}
    body = job_body(file, flags, parse_assignments(set_, "--set", "learning_rate=2e-4"), method)
    if body.get("type", "finetuning") != "finetuning":
        raise InvalidInput(f"type {body['type']!r}: only 'finetuning' exists", field="type")
    job = client().post("/api/jobs", body)
    _after_submit(job, "queued", stream_, json_out)


def _after_submit(job: dict, verb: str, stream_: bool, json_out: bool) -> None:
    if stream_:
        if not json_out:
            console.print(f"job [bold]{job['id']}[/] {verb} on {job['compute']}")
        job = follow(job["id"], quiet=json_out)
    if json_out:
        print_json(job)
    elif not stream_:
        console.print(f"job [bold]{job['id']}[/] {job['status']} on {job['compute']} - "
                      f"follow it with: forgeflow job stream {job['id']}")
    if job["status"] in (JobStatus.FAILED, JobStatus.CANCELED):
        raise typer.Exit(1)


def follow(job_id: str, *, quiet: bool = False, show_logs: bool = False) -> dict:
    """Show a progress bar until the job ends; returns the final job."""
    from forgeflow.cli.job_progress import follow as follow_job

    job = follow_job(client(), job_id, quiet=quiet, show_logs=show_logs, console=console)
    if not quiet:
        colour = {JobStatus.COMPLETED: "green", JobStatus.FAILED: "red", JobStatus.CANCELED: "yellow"}[job["status"]]
        console.print(f"job {job['id']} [{colour}]{job['status']}[/]" + (f": {job['error']}" if job.get("error") else ""))
    return job


@app.command("stream")
@command
def stream(job_id: str = typer.Argument(help="Job id or name."), logs: bool = typer.Option(False, help="Print the worker log too."),
           json_out: bool = JsonOpt) -> None:
    """Follow a job with a progress bar (steps, ETA, losses, tokens/s) until it ends."""
    job = follow(job_id, quiet=json_out, show_logs=logs)
    if json_out:
        print_json(job)
    if job["status"] != JobStatus.COMPLETED:
        raise typer.Exit(1)


@app.command("resume")
@command
def resume(job_id: str = typer.Argument(help="Job id or name."),
           stream_: bool = typer.Option(False, "--stream", help="Follow the job until it ends."),
           json_out: bool = JsonOpt) -> None:
    """Continue a Failed or Canceled job (or one whose worker died) from its last checkpoint."""
    job = client().post(url_path("api", "jobs", job_id, "resume"))
    if not json_out:
        ckpt = job.get("last_checkpoint")
        console.print(f"job [bold]{job['id']}[/] continues from {Path(ckpt).name if ckpt else 'the start (no checkpoint yet)'}")
    _after_submit(job, "queued again", stream_, json_out)


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
    table(jobs, [("id", "id"), ("name", "name"), ("type", "type"), ("status", "status"), ("compute", "compute"), ("base_model", "model"), ("steps", "steps"),
                 ("train_loss", "train loss"), ("eval_loss", "eval loss"), ("created_at", "created")])


@app.command("show")
@command
def show(job_id: str = typer.Argument(help="Job id or name."), json_out: bool = JsonOpt) -> None:
    """Status, settings, losses, outputs and the log tail of a job."""
    c = client()
    job = c.get(url_path("api", "jobs", job_id))
    job["metrics_history"] = c.get(url_path("api", "jobs", job_id, "metrics"))
    if json_out:
        print_json(job)
        return
    kv(job, ["id", "name", "type", "status", "compute", "base_model", "training_data", "validation_data", "created_at",
             "started_at", "finished_at", "error", "progress", "metrics", "mlflow_run_id", "last_checkpoint"])
    hp = job.get("hyperparameters") or {}
    console.print("[bold]settings[/]: " + ", ".join(f"{k}={v}" for k, v in hp.items()), highlight=False, soft_wrap=True)
    hist = [m for m in job["metrics_history"] if "train_loss" in m or "eval_loss" in m]
    if hist:
        columns = [("step", "step"), ("train_loss", "train loss"), ("eval_loss", "eval loss"), ("learning_rate", "lr")]
        if any("rewards_margins" in m or "eval_rewards_margins" in m for m in hist):  # a DPO job's reward margins
            columns[3:3] = [("rewards_margins", "margin"), ("eval_rewards_margins", "eval margin")]
        for m in hist:
            for k, _ in columns[1:]:
                if isinstance(m.get(k), float):
                    m[k] = f"{m[k]:.4g}"
        table(hist[-15:], columns, title="losses (latest)")
    for kind, path in (job.get("outputs") or {}).items():
        label = {"mlflow_model": "merged model (MLflow)", "adapter": "LoRA adapter",
                 "result": "evaluation result"}.get(kind, kind)
        console.print(f"[bold]{label}[/]: {path}", highlight=False, soft_wrap=True)
    if job.get("type") == "evaluation" and job["status"] == JobStatus.COMPLETED:
        from forgeflow.cli.evaluate import show_result

        show_result(c.evaluation(job["id"]))
    text = c.get(url_path("api", "jobs", job['id'], "logs"))["text"]
    if text:
        console.print("[bold]log tail[/]:")
        console.print("\n".join(text.rstrip().splitlines()[-10:]), markup=False, highlight=False)


@app.command("cancel")
@command
def cancel(job_id: str = typer.Argument(help="Job id or name."), json_out: bool = JsonOpt) -> None:
    """Ask a queued or running job to stop; it ends Canceled with its logs kept."""
    job = client().post(url_path("api", "jobs", job_id, "cancel"))
    print_json(job) if json_out else console.print(f"job {job['id']} {job['status']}")
