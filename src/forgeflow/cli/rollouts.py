"""`forgeflow online-endpoint rollout`: move a deployment's share of the live traffic up in steps while a condition
on its live metrics (and a judge) holds; `rollout status` shows each step and its evidence, `rollout cancel`
restores the split from before."""

from __future__ import annotations

import time

import typer

from forgeflow.cli.common import JsonOpt, client, command, console, print_json
from forgeflow.errors import InvalidInput
from forgeflow.store.states import RolloutState

app = typer.Typer(help="Roll a deployment out in steps, promoted or rolled back on its live metrics: "
                  "rollout --name E --deployment green --promote-if CONDITION; rollout status; rollout cancel.",
                  invoke_without_command=True)

NameOpt = typer.Option(..., "--name", "-n", help="Endpoint name.")
WAIT_POLL_S = 1.0


@app.callback()
@command
def rollout(ctx: typer.Context,
            name: str = typer.Option(None, "--name", "-n", help="Endpoint name."),
            deployment: str = typer.Option(None, "--deployment", help="The deployment whose traffic moves up."),
            canary: int = typer.Option(None, "--canary", help="Its first share in percent, 1-99 (default 10), taken "
                                       "from the other deployments in proportion to what they had."),
            promote_if: str = typer.Option(None, "--promote-if", help="The condition every step must hold, e.g. "
                                           "\"error_rate<0.01 and p95_latency_ms<1.2*blue and judge>=blue\": metrics "
                                           "error_rate, requests, p50/p95/p99_latency_ms, ttft_p95_ms, judge; a "
                                           "deployment's name is its value of the metric it is compared with."),
            min_requests: int = typer.Option(None, "--min-requests", help="Requests the deployment must get in a "
                                             "step before the condition is checked (default 100)."),
            step: str = typer.Option(None, "--step", help="The shares after the canary, e.g. 10,50,100 (default "
                                     "100); increasing, ending at 100."),
            step_seconds: float = typer.Option(None, "--step-seconds", help="The least time a step lasts "
                                               "(default 0)."),
            max_step_seconds: float = typer.Option(None, "--max-step-seconds", help="A step without its "
                                                   "--min-requests after this long ends the rollout as stalled, the "
                                                   "split from before restored (default 1800)."),
            judge_flow: str = typer.Option(None, "--judge-flow", help="A judge flow's folder on the server, when "
                                           "--promote-if uses judge (default: the shipped judge-answer flow)."),
            judge_connection: str = typer.Option(None, "--judge-connection", help="The connection the judge uses."),
            judge_sample: int = typer.Option(None, "--judge-sample", help="Answers of each side judged per step "
                                             "(default 20)."),
            wait: bool = typer.Option(False, "--wait", help="Follow it until it is promoted or rolled back."),
            json_out: bool = JsonOpt) -> None:
    """Start a rollout (see the subcommands for its status and cancel)."""
    if ctx.invoked_subcommand is not None:
        return
    for flag, value in (("--name", name), ("--deployment", deployment), ("--promote-if", promote_if)):
        if not value:
            raise InvalidInput(f"{flag} is required to start a rollout (or use: rollout status --name E)",
                               field=flag.lstrip("-").replace("-", "_"))
    started = client().start_rollout(name, deployment, promote_if, canary=canary, steps=_steps(step),
                                     min_requests=min_requests, step_seconds=step_seconds,
                                     max_step_seconds=max_step_seconds, judge_flow=judge_flow,
                                     judge_connection=judge_connection, judge_sample=judge_sample)
    if not wait:
        print_json(started) if json_out else console.print(
            f"[green]started[/] rollout {started['id']} of {deployment} on {name}: "
            f"{' -> '.join(f'{p}%' for p in started['plan'])}; follow it with: forgeflow online-endpoint rollout "
            f"status --name {name}")
        return
    shown = 0
    while True:
        current = client().rollout(name)
        if not json_out:
            for event in current["history"][shown:]:
                console.print(_event_line(event), highlight=False, soft_wrap=True)
            shown = len(current["history"])
        if current["state"] != RolloutState.RUNNING:
            break
        time.sleep(WAIT_POLL_S)
    print_json(current) if json_out else console.print(_final_line(current), highlight=False, soft_wrap=True)
    if current["state"] != RolloutState.PROMOTED:
        raise typer.Exit(1)


@app.command("status")
@command
def status(name: str = NameOpt, json_out: bool = JsonOpt) -> None:
    """The running (else the last) rollout: its plan, its step, the figures so far and every decision with its
    evidence."""
    current = client().rollout(name)
    if json_out:
        print_json(current)
        return
    console.print(f"[bold]rollout[/] {current['id']} of {current['deployment']} on {current['endpoint']}: "
                  f"{current['state']}", highlight=False)
    console.print(f"plan: {' -> '.join(f'{p}%' for p in current['plan'])} (step {current['step']}, "
                  f"{current['percent']}%); min_requests {current['min_requests']}", highlight=False)
    console.print(f"promote_if: {current['promote_if']}", highlight=False, soft_wrap=True)
    for deployment, figures in (current.get("window") or {}).items():
        console.print(f"this step so far, {deployment}: {_figures(figures)}", highlight=False, soft_wrap=True)
    for event in current["history"]:
        console.print(_event_line(event), highlight=False, soft_wrap=True)
    if current["state"] != RolloutState.RUNNING:
        console.print(_final_line(current), highlight=False, soft_wrap=True)


@app.command("cancel")
@command
def cancel(name: str = NameOpt, json_out: bool = JsonOpt,
           timeout_s: float = typer.Option(30.0, "--timeout", help="Seconds to wait for the split to be restored.")
           ) -> None:
    """Stop the running rollout and restore the split from before it."""
    current = client().cancel_rollout(name)
    deadline = time.monotonic() + timeout_s
    while current["state"] == RolloutState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.5)
        current = client().rollout(name)
    if json_out:
        print_json(current)
    elif current["state"] == RolloutState.RUNNING:
        console.print(f"[yellow]cancel asked[/]: the leader restores the split within a poll; check with forgeflow "
                      f"online-endpoint rollout status --name {name}")
    else:
        console.print(_final_line(current), highlight=False, soft_wrap=True)


def _steps(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidInput(f"--step {text!r}: give percents separated by commas, such as 10,50,100",
                           field="steps") from None


def _figures(figures: dict) -> str:
    shown = []
    for key in ("requests", "errors", "error_rate", "p50_latency_ms", "p95_latency_ms", "p99_latency_ms",
                "ttft_p95_ms", "judge"):
        if figures.get(key) is not None:
            value = figures[key]
            shown.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(shown) or "no requests yet"


def _event_line(event: dict) -> str:
    at, kind = event.get("at", ""), event.get("event")
    if kind == "step":
        return f"{at} step {event['step']}: {event['percent']}% -> traffic {event['traffic']}"
    if kind == "check":
        verdict = "held" if event["passed"] else "failed"
        clauses = "; ".join(f"{c['clause']} {'ok' if c['passed'] else 'FAILED'} ("
                            + ", ".join(f"{k}={v}" for k, v in c["values"].items()) + ")" for c in event["clauses"])
        return f"{at} check at {event['percent']}%: {verdict}: {clauses}"
    if kind == "started":
        return f"{at} started by {event.get('by') or 'owner'}; traffic was {event['traffic']}"
    return f"{at} {kind}" + (f": {event['why']}" if event.get("why") else "") + (
        f" -> traffic {event['traffic']}" if event.get("traffic") is not None else "")


def _final_line(current: dict) -> str:
    colour = "green" if current["state"] == RolloutState.PROMOTED else "red"
    why = f": {current['reason']}" if current.get("reason") else ""
    return f"[{colour}]{current['state']}[/]{why}"
