"""What every CLI command shares: the error edge, --json output, tables and the client."""

from __future__ import annotations

import functools
import json
import logging
import sys
from typing import Any, Callable, Iterable

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from forgeflow.errors import ForgeflowError

# Tool code in flows may switch the root logger to DEBUG (the walkthrough's does); the
# client's own HTTP chatter stays out of the user's terminal.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)

console = Console()
err_console = Console(stderr=True)

JsonOpt = typer.Option(False, "--json", help="Print one JSON document to stdout, for scripts.")


def command(fn: Callable) -> Callable:
    """Turn domain errors into one red line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ForgeflowError as e:
            where = f" ({e.field})" if e.field and e.field not in e.message else ""
            err_console.print(f"[bold red]error:[/] {escape(e.message + where)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def table(rows: Iterable[dict], columns: list[tuple[str, str]], title: str | None = None) -> None:
    t = Table(title=title, show_lines=False, header_style="bold")
    for _key, label in columns:
        t.add_column(label, overflow="fold")
    for row in rows:
        t.add_row(*["" if row.get(k) is None else str(row.get(k)) for k, _ in columns])
    console.print(t)


def kv(obj: dict, keys: list[str] | None = None) -> None:
    for k in keys or list(obj):
        v = obj.get(k)
        if isinstance(v, (dict, list)):
            v = json.dumps(v)
        console.print(f"[bold]{k}[/]: {'' if v is None else v}", highlight=False, soft_wrap=True)


def client():
    from forgeflow.client import Client

    return Client()

