"""`forgeflow model evaluate`: a model against its baseline on held-out chat rows, as a job; then both side by side
(each metric with its interval, the difference, rows better and worse) and the rows that got worse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from forgeflow.cli.common import JsonOpt, client, command, console, print_json, table
from forgeflow.errors import UpstreamError
from forgeflow.store.states import JobStatus

WORSE_SHOWN = 10  # rows that got worse printed under the table (all of them are in --json)
TEXT_CHARS = 70


@command
def evaluate(
    model: str = typer.Option(..., "--model", help="The model to evaluate: NAME:VERSION, a base model's name, "
                              "NAME@ALIAS or a model folder."),
    baseline: str = typer.Option(None, "--baseline", help="The model to compare it with on the same rows (same "
                                 "forms), e.g. its base model."),
    data: Path = typer.Option(..., "--data", help="Held-out chat JSONL; each row's last assistant message is the "
                              "reference answer."),
    metrics: str = typer.Option(None, "--metrics", help="Comma-separated, from loss,exact_match,f1,rouge_l,judge "
                                "(default: all but judge)."),
    judge_flow: Path = typer.Option(None, "--judge-flow", help="An evaluation flow folder that scores an answer "
                                    "(default: the bundled judge-answer flow); with --metrics ...,judge."),
    judge_connection: str = typer.Option(None, "--judge-connection", help="The connection whose model judges "
                                         "(see: forgeflow connection list), in place of the judge flow's own."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Tokens generated per answer (default 128)."),
    max_rows: int = typer.Option(None, "--max-rows", help="Evaluate only the first N rows."),
    compute: str = typer.Option(None, "--compute", help="Compute target to run on (default local)."),
    name: str = typer.Option(None, "--name", help="Display name of the evaluation job."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Queue the job and print it; follow it with "
                                 "forgeflow job stream ID."),
    json_out: bool = JsonOpt,
) -> None:
    """Evaluate a model against a baseline on held-out data, as a job: assistant-token loss, exact match, token F1,
    ROUGE-L and an LLM judge, with confidence intervals and the rows that got better or worse. --json waits and
    prints the result."""
    body: dict[str, Any] = {"model": _local(model), "baseline": _local(baseline) if baseline else None,
                            "data": str(data.expanduser().resolve()),
                            "metrics": [m.strip() for m in metrics.split(",")] if metrics is not None else None,
                            "judge_flow": str(judge_flow.expanduser().resolve()) if judge_flow else None,
                            "judge_connection": judge_connection, "max_new_tokens": max_new_tokens,
                            "max_rows": max_rows, "compute": compute, "name": name}
    c = client()
    job = c.evaluate({k: v for k, v in body.items() if v is not None})
    if no_wait:
        print_json(job) if json_out else console.print(
            f"evaluation [bold]{job['id']}[/] {job['status']} on {job['compute']} - follow it with: forgeflow job "
            f"stream {job['id']}")
        return
    from forgeflow.cli.job_progress import follow

    if not json_out:
        console.print(f"evaluation [bold]{job['id']}[/] queued on {job['compute']}")
    job = follow(c, job["id"], quiet=json_out, console=console, unit="scored")
    if job["status"] != JobStatus.COMPLETED:
        raise UpstreamError(f"evaluation {job['id']} {job['status']}" + (f": {job['error']}" if job.get("error")
                            else "") + f" (continue it with: forgeflow job resume {job['id']})", field="job")
    result = c.evaluation(job["id"])
    print_json(result) if json_out else show_result(result)


def _local(ref: str) -> str:
    """A model folder on this machine as an absolute path (the server resolves names and versions itself)."""
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.is_dir() else ref


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _with_ci(metrics: dict[str, Any] | None, key: str, suffix: str = "_ci") -> str:
    if not metrics or key not in metrics:
        return "-"
    ci = metrics.get(key + suffix)
    text = _num(metrics[key])
    return f"{text} [{_num(ci[0])}, {_num(ci[1])}]" if isinstance(ci, list) and len(ci) == 2 else text


def comparison_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    """One row per metric: the model's value, the baseline's, the difference and how many rows each way."""
    mine = result["model"].get("metrics") or {}
    base = (result.get("baseline") or {}).get("metrics")
    compared = result.get("comparison") or {}
    rows = []
    for key in mine:
        if key.endswith("_ci") or not isinstance(mine[key], (int, float)):
            continue
        change = compared.get(key) or {}
        rows.append({"metric": key, "model": _with_ci(mine, key), "baseline": _with_ci(base, key),
                     "delta": _with_ci(change, "delta", "_ci") if change else "-",
                     "rows": f"{change.get('better', 0)} better / {change.get('worse', 0)} worse" if change else ""})
    return rows


def _short(text: Any) -> str:
    """A row's text on one line, cut short, its brackets shown as typed (never read as markup)."""
    text = " ".join(str(text or "").split())
    return escape(text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS - 1] + "…")


def show_result(result: dict[str, Any]) -> None:
    """The side-by-side table and the rows that got worse."""
    baseline = result.get("baseline")
    title = f"{result['model']['ref']}" + (f" vs {baseline['ref']}" if baseline else "") + f" on {result.get('data')}"
    table(comparison_rows(result), [("metric", "metric"), ("model", "model"), ("baseline", "baseline"),
                                    ("delta", "delta (model - baseline)"), ("rows", "rows")], title=escape(title))
    worse = [r for r in result.get("rows") or [] if r.get("change") == "worse"]
    if not baseline:
        return
    if not worse:
        console.print("[green]no row got worse[/]")
        return
    shown = [{"line": r.get("line"), "question": _short(r.get("question")), "reference": _short(r.get("reference")),
              "model": _short((r.get("model") or {}).get("answer")),
              "baseline": _short((r.get("baseline") or {}).get("answer"))} for r in worse[:WORSE_SHOWN]]
    table(shown, [("line", "line"), ("question", "question"), ("reference", "reference"), ("model", "model answer"),
                  ("baseline", "baseline answer")],
          title=f"rows that got worse ({len(worse)}{'' if len(worse) <= WORSE_SHOWN else f', first {WORSE_SHOWN}'})")
