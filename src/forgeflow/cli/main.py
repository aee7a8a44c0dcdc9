"""The `forgeflow` command: one sub-command group per stage of the walkthrough."""

from __future__ import annotations

import typer

from forgeflow import __version__
from forgeflow.cli import (audit, compute, connections, data, endpoints, flows, jobs, models, quickstart, server, token,
                           users)
from forgeflow.cli.common import JsonOpt, command, console, print_json

app = typer.Typer(
    name="forgeflow",
    help="Prepare data, fine-tune, register, deploy and chat with your own model - locally.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
@command
def init(json_out: bool = JsonOpt) -> None:
    """Create the workspace home (FORGEFLOW_HOME, default ~/.forgeflow): store, artifacts, MLflow, admin token."""
    from forgeflow.store.home import Paths
    from forgeflow.store.workspace import Workspace

    ws = Workspace(Paths.current())
    created = ws.ensure()
    info = {"home": str(ws.paths.root), "created": created, "db_url": ws.paths.db_url,
            "mlflow_tracking_uri": ws.paths.mlflow_uri, "artifacts": str(ws.paths.artifacts)}
    if json_out:
        print_json(info)
        return
    console.print(f"{'Created' if created else 'Using'} workspace at [bold]{ws.paths.root}[/]")
    console.print(f"MLflow tracking URI: {ws.paths.mlflow_uri}")
    console.print("Admin token: run [bold]forgeflow token show[/]; start the server with [bold]forgeflow serve --detach[/]")


token_app = typer.Typer(help="Tokens for the REST API and Studio: personal access tokens, and the owner token made "
                        "at init.", no_args_is_help=True)


@token_app.command("show")
@command
def token_show(json_out: bool = JsonOpt) -> None:
    """Print the token the CLI uses: FORGEFLOW_TOKEN, else the owner token of this machine's workspace (send it as
    'Authorization: Bearer <token>')."""
    from forgeflow.client import admin_token

    tok = admin_token()
    print_json({"token": tok}) if json_out else print(tok)


token_app.command("rotate")(token.rotate)
token_app.command("create")(token.create)
token_app.command("list")(token.list_)
token_app.command("revoke")(token.revoke)


@app.command()
def version(json_out: bool = JsonOpt) -> None:
    """Print the forgeflow version."""
    print_json({"version": __version__}) if json_out else print(__version__)


app.add_typer(server.app, name="serve")
app.add_typer(token_app, name="token")
app.add_typer(models.app, name="model")
app.add_typer(data.app, name="data")
app.add_typer(jobs.app, name="job")
app.add_typer(compute.app, name="compute")
app.add_typer(endpoints.endpoint_app, name="online-endpoint")
app.add_typer(endpoints.deployment_app, name="online-deployment")
app.add_typer(connections.app, name="connection")
app.add_typer(flows.app, name="flow")
app.add_typer(users.app, name="user")
app.add_typer(audit.app, name="audit")
app.command("whoami")(users.whoami)
app.command("quickstart")(quickstart.quickstart)


if __name__ == "__main__":
    app()
