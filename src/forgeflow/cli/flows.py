"""`forgeflow flow`: run Prompt flow `flow.dag.yaml` flows unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from forgeflow.cli.common import JsonOpt, client, command, console, parse_pairs, print_json, table
from forgeflow.errors import InvalidInput

app = typer.Typer(help="Prompt flow style flows (flow.dag.yaml) with Python tools and connections.", no_args_is_help=True)


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
    return parse_pairs(items, "--inputs")


@app.command("test")
@command
def test(
    flow: Path = typer.Option(..., "--flow", help="The flow folder (holding flow.dag.yaml)."),
    inputs: list[str] = typer.Option(None, "--inputs", help="NAME=VALUE ... or a JSON file of inputs."),
    node: str = typer.Option(None, "--node", help="Run only this node, its inputs taken from --inputs."),
    json_out: bool = JsonOpt,
) -> None:
    """Run a flow once; print its outputs and per-node timings, keep details under FLOW/.forgeflow/."""
    from forgeflow.flows.executor import run_flow, write_details

    c = client()
    result = run_flow(flow, _inputs(inputs), connection_provider=c.connection, node=node)
    details = write_details(flow, result)
    if json_out:
        print_json({"outputs": result.outputs, "nodes": result.node_results, "duration_s": result.duration_s,
                    "details": str(details)})
        return
    for k, v in result.outputs.items():
        console.print(f"[bold]{k}[/]: {v if isinstance(v, str) else json.dumps(v)}", highlight=False, soft_wrap=True)
    rows = [{"node": n, "status": r.get("status"), "seconds": f"{r.get('duration_s', 0):.3f}"} for n, r in result.node_results.items()]
    table(rows, [("node", "node"), ("status", "status"), ("seconds", "seconds")])
    console.print(f"details: {details}", highlight=False)
