"""The `forgeflow` command: one sub-command group per stage of the walkthrough."""

from __future__ import annotations

import typer

from forgeflow import __version__
from forgeflow.cli import (audit, compute, connections, data, endpoints, flows, jobs, models, quickstart, rollouts,
                           server, token, users)
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
def init(
    database_url: str = typer.Option(
        None, "--database-url", help="The store: sqlite:///FILE (default: forgeflow.db in the home) or "
        "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE for a team. '-' reads it from stdin, which keeps a "
        "password off the command line. Saved in the home (the password encrypted); FORGEFLOW_DATABASE_URL "
        "overrides it."),
    mlflow_uri: str = typer.Option(
        None, "--mlflow-uri", help="MLflow tracking and registry: an MLflow server http(s)://HOST:PORT or a database "
        "URL ('-' reads it from stdin). Default: the store's Postgres database (schema 'mlflow'), or mlflow.db "
        "beside a SQLite store."),
    artifacts_root: str = typer.Option(
        None, "--artifacts-root", help="A directory every server and cluster node reaches (e.g. an NFS mount) for "
        "datasets, job folders, models and flows. Default: the home."),
    mlflow_artifacts: str = typer.Option(
        None, "--mlflow-artifacts", help="Where MLflow keeps new experiments' artifacts: a directory, or s3://, gs://, "
        "wasbs:// when that store's client library is installed. Default: mlruns under the artifacts root."),
    json_out: bool = JsonOpt,
) -> None:
    """Create the workspace home (FORGEFLOW_HOME, default ~/.forgeflow): store, artifacts, MLflow, admin token.
    Run it again with options to point the workspace at another database, MLflow or artifacts root (nothing is
    copied over)."""
    from forgeflow.store.home import Paths
    from forgeflow.store.workspace import Workspace

    ws = Workspace(Paths.current())
    ws.configure(database_url=_from_stdin(database_url), mlflow_uri=_from_stdin(mlflow_uri),
                 artifacts_root=artifacts_root, mlflow_artifacts=mlflow_artifacts)
    created = ws.ensure()
    ws.ensure_mlflow()
    info = {"created": created, **ws.describe()}
    if json_out:
        print_json(info)
        return
    console.print(f"{'Created' if created else 'Using'} workspace at [bold]{ws.paths.root}[/]")
    console.print(f"Store: {info['database_url']}")
    console.print(f"MLflow tracking URI: {info['mlflow_tracking_uri']}")
    console.print(f"Artifacts: {info['artifacts_root']} (MLflow's: {info['mlflow_artifacts']})")
    console.print("Admin token: run [bold]forgeflow token show[/]; start the server with [bold]forgeflow serve --detach[/]")


def _from_stdin(value: str | None) -> str | None:
    """'-' means: read the value from stdin (a URL with a password stays out of the process list and shell history)."""
    if value != "-":
        return value
    import sys

    return sys.stdin.readline().strip() or None


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
endpoints.endpoint_app.add_typer(rollouts.app, name="rollout")
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
