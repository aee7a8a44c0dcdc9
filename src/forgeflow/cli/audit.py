"""`forgeflow audit`: the log of every change (who, what, when, from where, how it ended)."""

from __future__ import annotations

import typer

from forgeflow.cli.common import JsonOpt, client, command, print_json, table

app = typer.Typer(help="The audit log: every change to the workspace, sign-ins and refused credentials.",
                  no_args_is_help=True)


@app.command("list")
@command
def list_(
    since: str = typer.Option(None, "--since", help="A span back from now (30m, 1h, 2d, 1w) or an ISO time "
                              "(2026-05-01T12:00:00Z)."),
    user: str = typer.Option(None, "--user", help="One user's rows."),
    limit: int = typer.Option(100, "--limit", help="At most this many rows, newest first (1-1000)."),
    json_out: bool = JsonOpt,
) -> None:
    """Changes, newest first: when, who (and their role), what (method and route), the target, the status, from
    where."""
    params = {"limit": limit} | ({"since": since} if since else {}) | ({"user": user} if user else {})
    rows = client().get("/api/audit", params=params)
    if json_out:
        print_json(rows)
        return
    table(rows, [("at", "WHEN"), ("user", "USER"), ("role", "ROLE"), ("action", "ACTION"), ("target", "TARGET"),
                 ("status", "STATUS"), ("client", "FROM")])
