"""`forgeflow user`: people with a role (reader, contributor, owner), and `forgeflow whoami`."""

from __future__ import annotations

import typer

from forgeflow.cli.common import JsonOpt, client, command, console, err_console, kv, print_json, table
from forgeflow.names import url_path

app = typer.Typer(help="Users of the workspace and their roles: reader (sees all but secrets, changes nothing), "
                  "contributor (creates and runs jobs, models, endpoints, flows, connections), owner (also users, "
                  "roles and the workspace's keys).", no_args_is_help=True)

RoleOpt = typer.Option(..., "--role", help="reader, contributor or owner.")
USER_COLUMNS = [("name", "NAME"), ("role", "ROLE"), ("created_at", "CREATED"), ("created_by", "BY")]


def print_new_token(result: dict, json_out: bool) -> None:
    """A token just made: its secret alone on stdout (or the whole answer as JSON), what it is on stderr."""
    if json_out:
        print_json(result)
        return
    print(result["token"])
    expires = result.get("expires_at_utc") or "never"
    err_console.print(f"Personal access token {result['id']} for {result['user']} ({result['role']}), valid until "
                      f"{expires}. It is shown this once: hand it over now (the user sets FORGEFLOW_TOKEN, or signs "
                      "in to Studio with it).", highlight=False)


@app.command("create")
@command
def create(
    name: str = typer.Argument(..., help="Up to 64 letters, digits, '.', '_', '@' and '-', a letter first."),
    role: str = RoleOpt,
    expires_in: int = typer.Option(90, "--expires-in", help="Days until the first token stops working (1-365)."),
    json_out: bool = JsonOpt,
) -> None:
    """Add a user (owner only) and print their first personal access token, shown this once."""
    print_new_token(client().post("/api/users", {"name": name, "role": role, "expires_in_days": expires_in}),
                    json_out)


@app.command("list")
@command
def list_(json_out: bool = JsonOpt) -> None:
    """Every user and their role."""
    rows = client().get("/api/users")
    print_json(rows) if json_out else table(rows, USER_COLUMNS)


@app.command("show")
@command
def show(name: str = typer.Argument(..., help="The user."), json_out: bool = JsonOpt) -> None:
    """One user and their role."""
    row = client().get(url_path("api", "users", name))
    print_json(row) if json_out else kv(row)


@app.command("update")
@command
def update(name: str = typer.Argument(..., help="The user."), role: str = RoleOpt, json_out: bool = JsonOpt) -> None:
    """Give a user another role (owner only); their tokens and Studio sessions take it at their next request."""
    row = client().patch(url_path("api", "users", name), {"role": role})
    print_json(row) if json_out else console.print(f"user {row['name']} is now {row['role']}", highlight=False)


@app.command("delete")
@command
def delete(name: str = typer.Argument(..., help="The user."), json_out: bool = JsonOpt) -> None:
    """Remove a user (owner only): every token of theirs is revoked at once, and their Studio sessions end."""
    out = client().delete(url_path("api", "users", name))
    if json_out:
        print_json(out)
        return
    console.print(f"deleted user {out['deleted']}; {out['tokens_revoked']} token(s) revoked", highlight=False)


@command
def whoami(json_out: bool = JsonOpt) -> None:
    """Who the CLI acts as (FORGEFLOW_TOKEN, else this machine's owner token): user, role, token, expiry."""
    me = client().get("/api/me")
    if json_out:
        print_json(me)
        return
    kv(me | {"token_id": me["token_id"] or "(owner token)"}, ["user", "role", "token_id", "expires_at_utc"])
