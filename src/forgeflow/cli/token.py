"""`forgeflow token`: personal access tokens (create, list, revoke) and the owner token made at init (rotate; `show`
is in cli/main.py, as it reads this machine's workspace)."""

from __future__ import annotations

import typer

from forgeflow.cli.common import JsonOpt, client, command, console, err_console, print_json, table
from forgeflow.cli.users import print_new_token
from forgeflow.names import url_path


@command
def create(
    user: str = typer.Option(None, "--user", help="Whose token (default: yourself); another user's needs the "
                             "owner role."),
    expires_in: int = typer.Option(90, "--expires-in", help="Days until the token stops working (1-365)."),
    description: str = typer.Option(None, "--description", help="What the token is for, shown in lists."),
    json_out: bool = JsonOpt,
) -> None:
    """Make a personal access token and print it, shown this once (only its hash is kept)."""
    body = {"user": user, "expires_in_days": expires_in, "description": description}
    print_new_token(client().post("/api/tokens", body), json_out)


@command
def list_(
    user: str = typer.Option(None, "--user", help="One user's tokens (another user's needs the owner role)."),
    json_out: bool = JsonOpt,
) -> None:
    """Tokens with their user, role, expiry and whether revoked, never their secrets (an owner sees everyone's)."""
    rows = client().get("/api/tokens", params={"user": user} if user else None)
    if json_out:
        print_json(rows)
        return
    table([r | {"state": "revoked" if r["revoked_at"] else "live"} for r in rows],
          [("id", "ID"), ("user", "USER"), ("role", "ROLE"), ("created_at", "CREATED"),
           ("expires_at_utc", "EXPIRES"), ("state", "STATE"), ("description", "DESCRIPTION")])


@command
def revoke(token_id: str = typer.Argument(..., help="The token's id (forgeflow token list)."),
           json_out: bool = JsonOpt) -> None:
    """Revoke a token: it, and every Studio session signed in with it, stop working at once on every server."""
    row = client().delete(url_path("api", "tokens", token_id))
    print_json(row) if json_out else console.print(f"revoked token {row['id']} of {row['user']}", highlight=False)


@command
def rotate(json_out: bool = JsonOpt) -> None:
    """Make a new owner token: the old token and every Studio session signed in with it stop working at once.

    The running server (FORGEFLOW_URL) makes it; with none running, this machine's workspace is changed.

    The new token is printed once: scripts that set FORGEFLOW_TOKEN to it need the new one. Personal access
    tokens are not touched.
    """
    api = client()
    if api.healthy():
        result = api.post("/api/token/rotate") | {"server": api.url}
    else:
        from forgeflow.store.identity import OWNER_USER, Role
        from forgeflow.store.workspace import Workspace

        ws = Workspace.open()
        result = ws.rotate_admin_token() | {"server": None, "home": str(ws.paths.root)}
        # No server saw this change, so no guard wrote its row: the audit log still says who did it and from where.
        ws.audit.record("POST /api/token/rotate", status=200, user=OWNER_USER, role=Role.OWNER, client="local",
                        detail={"token": "owner", "sessions_ended": result["sessions_ended"]})
    if json_out:
        print_json(result)
        return
    print(result["token"])
    where = f"the server at {result['server']}" if result["server"] else f"the workspace at {result['home']}"
    err_console.print(f"New owner token made by {where}; the old one and {result['sessions_ended']} Studio "
                      "session(s) signed in with it no longer work. Sign in to Studio again with the new token.",
                      highlight=False)
