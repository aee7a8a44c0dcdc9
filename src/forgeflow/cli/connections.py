"""`forgeflow connection`: Prompt flow connections (custom keys, OpenAI) with encrypted secrets."""

from __future__ import annotations

from pathlib import Path

import typer

from forgeflow.cli.common import JsonOpt, client, command, console, kv, parse_pairs, print_json, table
from forgeflow.errors import InvalidInput

app = typer.Typer(help="Connections that flows use (endpoint + secret key, OpenAI, ...).", no_args_is_help=True)


@app.command("create")
@command
def create(
    file: Path = typer.Option(None, "--file", "-f", help="Prompt flow connection YAML (type: custom, configs, secrets)."),
    name: str = typer.Option(None, "--name", help="Connection name (overrides the file's)."),
    from_endpoint: str = typer.Option(None, "--from-endpoint", help="Fill `endpoint` and the secret `key` from this online endpoint."),
    type: str = typer.Option("custom", "--type", help="custom, open_ai or azure_open_ai (without a file)."),
    set_: list[str] = typer.Option(None, "--set", help="configs.NAME=VALUE or secrets.NAME=VALUE (repeatable)."),
    update: bool = typer.Option(False, "--update", help="Replace an existing connection of that name."),
    json_out: bool = JsonOpt,
) -> None:
    """Create a connection from a YAML file, from an endpoint, or from --set values."""
    c = client()
    if file:
        from forgeflow.flows.connection_yaml import load_connection_yaml

        conn = load_connection_yaml(file)
    else:
        conn = {"name": name, "type": type, "configs": {}, "secrets": {}}
    if name:
        conn["name"] = name
    if from_endpoint:
        ep = c.get(f"/api/endpoints/{from_endpoint}")
        conn["configs"]["endpoint"] = ep["scoring_uri"]
        conn["secrets"]["key"] = c.get(f"/api/endpoints/{from_endpoint}/credentials")["primary_key"]
        conn.setdefault("type", "custom")
    for k, v in parse_pairs(set_, "--set").items():
        section, _, key = k.partition(".")
        if section not in ("configs", "secrets") or not key:
            raise InvalidInput(f"--set {k}=...: write configs.NAME=VALUE or secrets.NAME=VALUE")
        conn[section][key] = v
    if not conn.get("name"):
        raise InvalidInput("a connection needs a name: --name or `name:` in the file")
    body = {k: conn[k] for k in ("name", "type", "configs", "secrets")}
    out = c.put(f"/api/connections/{conn['name']}", body) if update else c.post("/api/connections", body)
    print_json(out) if json_out else console.print(f"[green]saved[/] connection {out['name']} ({out['type']})")


@app.command("list")
@command
def list_(json_out: bool = JsonOpt) -> None:
    """All connections (secrets masked)."""
    rows = client().get("/api/connections")
    if json_out:
        print_json(rows)
        return
    for r in rows:
        r["config_keys"] = ", ".join(r["configs"])
        r["secret_keys"] = ", ".join(r["secrets"])
    table(rows, [("name", "name"), ("type", "type"), ("config_keys", "configs"), ("secret_keys", "secrets")])


@app.command("show")
@command
def show(name: str = typer.Option(..., "--name"), json_out: bool = JsonOpt) -> None:
    """A connection, secrets shown as ******."""
    out = client().get(f"/api/connections/{name}")
    print_json(out) if json_out else kv(out)


@app.command("delete")
@command
def delete(name: str = typer.Option(..., "--name"), json_out: bool = JsonOpt) -> None:
    """Delete a connection."""
    out = client().delete(f"/api/connections/{name}")
    print_json(out) if json_out else console.print(f"deleted connection {name}")
