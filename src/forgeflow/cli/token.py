"""`forgeflow token rotate`: a new workspace admin token, ending the old one and every Studio session."""

from __future__ import annotations

from forgeflow.cli.common import JsonOpt, client, command, err_console, print_json


@command
def rotate(json_out: bool = JsonOpt) -> None:
    """Make a new admin token: the old token and every Studio session stop working at once.

    The running server (FORGEFLOW_URL) makes it; with none running, this machine's workspace is changed.

    The new token is printed once: scripts that set FORGEFLOW_TOKEN need it.
    """
    api = client()
    if api.healthy():
        result = api.post("/api/token/rotate") | {"server": api.url}
    else:
        from forgeflow.store.workspace import Workspace

        ws = Workspace.open()
        result = ws.rotate_admin_token() | {"server": None, "home": str(ws.paths.root)}
    if json_out:
        print_json(result)
        return
    print(result["token"])
    where = f"the server at {result['server']}" if result["server"] else f"the workspace at {result['home']}"
    err_console.print(f"New admin token made by {where}; the old one and {result['sessions_ended']} Studio "
                      "session(s) no longer work. Sign in to Studio again with the new token.", highlight=False)
