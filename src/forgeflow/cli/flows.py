"""`forgeflow flow`: run Prompt flow `flow.dag.yaml` flows unchanged."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import typer

from forgeflow.cli.common import JsonOpt, client, command, console, err_console, kv, print_json, table
from forgeflow.errors import InvalidInput, ServerUnavailable
from forgeflow.flows.result import RunStatus
from forgeflow.names import parse_assignments

VARIANT_HELP = ("Run this variant of a node instead of its default: '${NODE.VARIANT_ID}', e.g. '${chat.variant_1}' "
                "(quote it: the shell expands ${...}).")

app = typer.Typer(help="Prompt flow style flows (flow.dag.yaml) with Python tools and connections.", no_args_is_help=True)


def connection_lookup() -> Callable[[str], dict]:
    """How flows run from the CLI find connections: the forgeflow server when one answers (it may be remote),
    else this machine's workspace, so flows run without a server. Each name is looked up once."""
    from forgeflow.store.connections import local_connection_lookup

    local = local_connection_lookup()
    cache: dict[str, dict] = {}
    lock = threading.Lock()
    server = None
    server_answers = True

    def lookup(name: str) -> dict:
        nonlocal server, server_answers
        with lock:
            if name not in cache:
                if server_answers:
                    try:
                        server = server or client()
                        cache[name] = server.connection(name)
                        return cache[name]
                    except ServerUnavailable:
                        server_answers = False
                cache[name] = local(name)
            return cache[name]

    return lookup


def _inputs(items: list[str] | None) -> dict:
    items = items or []
    if len(items) == 1 and items[0].endswith(".json") and "=" not in items[0]:
        path = Path(items[0])
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise InvalidInput(f"--inputs {path}: {e}") from None
        if not isinstance(data, dict):
            raise InvalidInput(f"--inputs {path}: the file must hold a JSON object")
        return data
    return parse_assignments(items, "--inputs", "question=hi")


@app.command("test")
@command
def test(
    flow: Path = typer.Option(..., "--flow", help="The flow folder (holding flow.dag.yaml)."),
    inputs: list[str] = typer.Option(None, "--inputs", help="NAME=VALUE ... or a JSON file of inputs."),
    node: str = typer.Option(None, "--node", help="Run only this node, its inputs taken from --inputs."),
    variant: str = typer.Option(None, "--variant", help=VARIANT_HELP),
    json_out: bool = JsonOpt,
) -> None:
    """Run a flow once; print its outputs and per-node timings, keep details under FLOW/.forgeflow/."""
    from forgeflow.flows.executor import run_flow, write_details

    result = run_flow(flow, _inputs(inputs), connection_provider=connection_lookup(), node=node, variant=variant)
    details = write_details(flow, result)
    if json_out:
        print_json({"outputs": result.outputs, "nodes": result.node_results, "duration_s": result.duration_s,
                    "variant": result.variant, "details": str(details)})
        return
    if result.variant:
        console.print(f"[dim]variant {result.variant}[/]", highlight=False)
    for k, v in result.outputs.items():
        console.print(f"[bold]{k}[/]: {v if isinstance(v, str) else json.dumps(v)}", highlight=False, soft_wrap=True)
    rows = [{"node": n, "status": r.get("status"), "seconds": f"{r.get('duration_s', 0):.3f}"} for n, r in result.node_results.items()]
    table(rows, [("node", "node"), ("status", "status"), ("seconds", "seconds")])
    console.print(f"details: {details}", highlight=False)


@app.command("chat")
@command
def chat(
    flow: Path = typer.Option(..., "--flow", help="A chat flow folder (is_chat_input / is_chat_output)."),
    inputs: list[str] = typer.Option(None, "--inputs", help="Other inputs, NAME=VALUE ... or a JSON file."),
    variant: str = typer.Option(None, "--variant", help=VARIANT_HELP),
    json_out: bool = JsonOpt,
) -> None:
    """Chat in the terminal (type `exit` or Ctrl-D to quit); answers stream as they are written."""
    import sys

    from forgeflow.flows.chat import ChatSession, chat_loop

    session = ChatSession(flow, connection_provider=connection_lookup(), inputs=_inputs(inputs), variant=variant)
    interactive = sys.stdin.isatty()

    def read(prompt: str) -> str:
        if interactive and not json_out:
            return input(prompt)
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        if not json_out:
            sys.stdout.write(prompt + line)
        return line.rstrip("\n")

    def write(text: str) -> None:
        if not json_out:
            sys.stdout.write(text)
            sys.stdout.flush()

    if not json_out:
        console.print(f"[dim]chatting with {session.flow_dir.name}; type exit or press Ctrl-D to quit[/]")
    turns = chat_loop(session, read, write, lambda msg: err_console.print(f"[bold red]error:[/] {msg}",
                                                                            highlight=False, soft_wrap=True))
    if json_out:
        print_json({"turns": turns, "chat_history": session.history})


@app.command("serve")
@command
def serve(
    flow: Path = typer.Option(..., "--flow", help="The flow folder to serve."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind."),
    port: int = typer.Option(8080, "--port", help="Port to listen on."),
    key: str = typer.Option(None, "--key", envvar="FORGEFLOW_FLOW_KEY",
                            help="Require 'Authorization: Bearer KEY' on /score (also FORGEFLOW_FLOW_KEY)."),
    workers: int = typer.Option(8, "--workers", help="Requests run at the same time (thread pool size)."),
    json_out: bool = JsonOpt,
) -> None:
    """Serve a flow: POST /score (inputs JSON in, outputs out; SSE with Accept: text/event-stream), GET /health."""
    import uvicorn

    from forgeflow.flows.serve import create_flow_app

    app_ = create_flow_app(flow, connection_provider=connection_lookup(), key=key, workers=workers)
    info = {"url": f"http://{host}:{port}", "score": f"http://{host}:{port}/score", "auth": bool(key)}
    print_json(info) if json_out else console.print(
        f"serving {flow} at [bold]{info['score']}[/]{' (key required)' if key else ''}; Ctrl-C stops", highlight=False)
    uvicorn.run(app_, host=host, port=port, log_level="warning")


run_app = typer.Typer(
    help="Batch runs: `flow run --flow DIR --data rows.jsonl [--variant '${node.variant_id}']` starts one; show / "
         "show-details / show-metrics / resume / list / compare work on stored runs.",
    invoke_without_command=True,
)
app.add_typer(run_app, name="run")


def _progress(json_out: bool):
    """A rich progress bar on stderr (quiet with --json); returns (context, callback)."""
    from contextlib import nullcontext

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if json_out:
        return nullcontext(), None
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("[red]{task.fields[failed]} failed"), TimeRemainingColumn(), console=err_console)
    task = bar.add_task("lines", total=None, failed=0)
    failed = [0]

    def update(done: int, total: int, line: dict) -> None:
        failed[0] += line["status"] != RunStatus.COMPLETED
        bar.update(task, completed=done, total=total, failed=failed[0])

    return bar, update


def _execute(record, workers: int | None, json_out: bool) -> None:
    from forgeflow.flows.batch import BatchRun, summary

    meta = record.meta()
    ctx, update = _progress(json_out)
    with ctx:
        BatchRun(record, connection_provider=connection_lookup(), workers=workers or meta.get("workers") or 4,
                 progress=update).execute()
    out = summary(record)
    if json_out:
        print_json(out)
        return
    colour = "green" if out["status"] == RunStatus.COMPLETED else "yellow"
    console.print(f"[{colour}]{out['status']}[/] run [bold]{record.name}[/]: {out['completed_lines']} completed, "
                  f"{out['failed_lines']} failed of {out['total_lines']} lines; see: forgeflow flow run show-details "
                  f"{record.name}", highlight=False)


@run_app.callback()
@command
def run(
    ctx: typer.Context,
    flow: Path = typer.Option(None, "--flow", help="The flow folder to run over every line."),
    data: Path = typer.Option(None, "--data", help="Rows: .jsonl, .json (a list) or .csv."),
    column_mapping: list[str] = typer.Option(
        None, "--column-mapping",
        help="INPUT=${data.COLUMN}, INPUT=${run.outputs.NAME} (with --run) or INPUT=literal; repeatable."),
    base_run: str = typer.Option(None, "--run", help="A base run whose lines ${run.outputs.x} reads (evaluations)."),
    name: str = typer.Option(None, "--name", help="Name of the new run (default: FLOW[_VARIANT]_<timestamp>)."),
    workers: int = typer.Option(4, "--workers", help="Lines run at the same time."),
    variant: str = typer.Option(None, "--variant", help=VARIANT_HELP),
    json_out: bool = JsonOpt,
) -> None:
    """Run a flow over a data file in parallel, keeping every line's result and error under the home."""
    if ctx.invoked_subcommand:
        return
    if flow is None:
        raise InvalidInput("flow run needs --flow DIR and --data FILE (or a sub-command: show, show-details, "
                           "show-metrics, resume, list, compare)", field="flow")
    from forgeflow.flows.batch import start_run

    record = start_run(flow, data=data, column_mapping=column_mapping, base_run=base_run, name=name, workers=workers,
                       variant=variant)
    if not json_out:
        meta = record.meta()
        shown = f", variant {meta['variant']}" if meta.get("variant") else ""
        console.print(f"run [bold]{record.name}[/] ({meta['total_lines'] or 'base run'} lines{shown})", highlight=False)
    _execute(record, workers, json_out)


@run_app.command("show")
@command
def run_show(name: str = typer.Argument(..., help="The run's name."), json_out: bool = JsonOpt) -> None:
    """A run's status, flow, data and line counts."""
    from forgeflow.flows.batch import summary
    from forgeflow.flows.runs import RunRecord

    out = summary(RunRecord.open(name))
    print_json(out) if json_out else kv(out, ["name", "status", "flow", "variant", "data", "run", "column_mapping",
                                             "total_lines",
                                             "completed_lines", "failed_lines", "duration_s", "created_at",
                                             "finished_at", "aggregation", "run_dir"])


@run_app.command("show-details")
@command
def run_show_details(
    name: str = typer.Argument(..., help="The run's name."),
    max_results: int = typer.Option(100, "--max-results", help="Show at most this many lines (0: all)."),
    json_out: bool = JsonOpt,
) -> None:
    """Every line: inputs, outputs, status and error."""
    from forgeflow.flows.runs import RunRecord

    lines = RunRecord.open(name).lines()
    lines = lines[:max_results] if max_results else lines
    if json_out:
        print_json(lines)
        return

    def cell(value) -> str:
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    rows = [{"line": ln["line_number"], "status": ln["status"], "inputs": cell(ln.get("inputs")),
             "outputs": cell(ln.get("outputs")) if ln.get("outputs") is not None else "",
             "error": (ln.get("error") or {}).get("message", "")} for ln in lines]
    table(rows, [("line", "line"), ("status", "status"), ("inputs", "inputs"), ("outputs", "outputs"),
                 ("error", "error")])


@run_app.command("show-metrics")
@command
def run_show_metrics(name: str = typer.Argument(..., help="The run's name."), json_out: bool = JsonOpt) -> None:
    """Metrics logged by the flow's aggregation nodes (log_metric)."""
    from forgeflow.flows.runs import RunRecord

    metrics = RunRecord.open(name).metrics()
    print_json(metrics) if json_out else (kv(metrics) if metrics else console.print("no metrics"))


@run_app.command("resume")
@command
def run_resume(
    name: str = typer.Argument(..., help="The interrupted run."),
    workers: int = typer.Option(None, "--workers", help="Lines at the same time (default: as first started)."),
    json_out: bool = JsonOpt,
) -> None:
    """Finish an interrupted run: only the lines with no result yet are run."""
    from forgeflow.flows.batch import resumable
    from forgeflow.flows.runs import RunRecord

    record = RunRecord.open(name)
    resumable(record)
    _execute(record, workers, json_out)


@run_app.command("list")
@command
def run_list(json_out: bool = JsonOpt) -> None:
    """Stored batch runs, oldest first."""
    from forgeflow.flows.runs import RunRecord

    rows = [{"name": r.name, **{k: r.meta().get(k) for k in ("status", "flow", "variant", "run", "total_lines",
                                                               "created_at")}} for r in RunRecord.all()]
    print_json(rows) if json_out else table(rows, [("name", "name"), ("status", "status"), ("variant", "variant"),
                                                    ("run", "base run"), ("total_lines", "lines"),
                                                    ("created_at", "created"), ("flow", "flow")])


@run_app.command("compare")
@command
def run_compare(
    names: list[str] = typer.Argument(..., help="The runs to compare: one per variant, or the evaluation runs over "
                                                "them (NAME ... or NAME,NAME)."),
    json_out: bool = JsonOpt,
) -> None:
    """Runs side by side: each run's variant, line counts and metrics (Prompt flow's prompt tuning)."""
    from forgeflow.flows.batch import compare

    out = compare([n for item in names for n in item.split(",") if n.strip()])
    if json_out:
        print_json(out)
        return
    runs = out["runs"]

    def cell(value) -> str:
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    rows = [{"what": "variant", **{str(i): r["variant"] or "default" for i, r in enumerate(runs)}},
            {"what": "base run", **{str(i): r["base_run"] for i, r in enumerate(runs)}},
            {"what": "status", **{str(i): r["status"] for i, r in enumerate(runs)}},
            {"what": "lines", **{str(i): f"{r['completed_lines']} completed, {r['failed_lines']} failed"
                                 for i, r in enumerate(runs)}}]
    rows += [{"what": m, **{str(i): cell(r["metrics"][m]) if m in r["metrics"] else "" for i, r in enumerate(runs)}}
             for m in out["metrics"]]
    table(rows, [("what", "run"), *[(str(i), r["name"]) for i, r in enumerate(runs)]])
