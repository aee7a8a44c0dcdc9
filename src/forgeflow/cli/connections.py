"""`forgeflow connection`: Prompt flow connections (custom keys, OpenAI) with encrypted secrets."""

from __future__ import annotations

from pathlib import Path

import typer

from forgeflow.cli.common import JsonOpt, client, command, console, kv, print_json, table
from forgeflow.errors import InvalidInput
from forgeflow.names import parse_assignments, url_path

app = typer.Typer(help="Connections that flows use (endpoint + secret key, OpenAI, ...).", no_args_is_help=True)


def _typed(type_: str) -> str:
    from forgeflow.store.connections import TYPES

    if type_ not in TYPES:
        raise InvalidInput(f"--type {type_!r} is not one of {', '.join(TYPES)}", field="type")
    return type_


# Prompt flow writes `--set a=1 b=2`: values after the first land in ctx.args.
_EXTRA = {"allow_extra_args": True}


def _settings(set_: list[str] | None, extra: list[str]) -> dict[str, str]:
    stray = [a for a in extra if "=" not in a]
    if stray:
        raise InvalidInput(f"unexpected argument {stray[0]!r} (values go as --set NAME=VALUE ...)", field="set")
    return parse_assignments([*(set_ or []), *extra], "--set", "secrets.key=VALUE")


@app.command("create", context_settings=_EXTRA)
@command
def create(
    ctx: typer.Context,
    file: Path = typer.Option(None, "--file", "-f", help="Prompt flow connection YAML (type: custom, configs, secrets)."),
    name: str = typer.Option(None, "--name", help="Connection name (overrides the file's)."),
    from_endpoint: str = typer.Option(None, "--from-endpoint", help="Fill `endpoint` and the secret `key` from this online endpoint."),
    type: str = typer.Option("custom", "--type", help="custom, open_ai or azure_open_ai (without a file)."),
    set_: list[str] = typer.Option(
        None, "--set",
        help="configs.NAME=VALUE or secrets.NAME=VALUE; for open_ai / azure_open_ai also api_key=, base_url=, "
             "organization=, api_base=, api_type=, api_version=. Values may be ${env:VAR} (read at run time).",
    ),
    update: bool = typer.Option(False, "--update", help="Replace an existing connection of that name."),
    json_out: bool = JsonOpt,
) -> None:
    """Create a connection from a YAML file, from an endpoint, or from --set values."""
    from forgeflow.flows.connection_yaml import apply_settings, load_connection_yaml

    c = client()
    if file:
        conn = load_connection_yaml(file)
    else:
        conn = {"name": name, "type": _typed(type), "configs": {}, "secrets": {}}
    if name:
        conn["name"] = name
    if from_endpoint:
        ep = c.get(url_path("api", "endpoints", from_endpoint))
        conn["configs"]["endpoint"] = ep["scoring_uri"]
        conn["secrets"]["key"] = c.get(url_path("api", "endpoints", from_endpoint, "credentials"))["primary_key"]
    apply_settings(conn, _settings(set_, ctx.args))
    if not conn.get("name"):
        raise InvalidInput("a connection needs a name: --name or `name:` in the file", field="name")
    body = {k: conn[k] for k in ("name", "type", "configs", "secrets")}
    out = c.put(url_path("api", "connections", conn['name']), body) if update else c.post("/api/connections", body)
    print_json(out) if json_out else console.print(f"[green]saved[/] connection {out['name']} ({out['type']})")


@app.command("update", context_settings=_EXTRA)
@command
def update_(
    ctx: typer.Context,
    name: str = typer.Option(None, "--name", help="The connection to change (default: the file's name)."),
    file: Path = typer.Option(None, "--file", "-f", help="A connection YAML whose configs and secrets are merged in."),
    set_: list[str] = typer.Option(None, "--set", help="Fields to add or change, as for create."),
    unset: list[str] = typer.Option(None, "--unset", help="Fields to remove: configs.NAME, secrets.NAME or NAME."),
    json_out: bool = JsonOpt,
) -> None:
    """Merge changes into an existing connection; fields not named keep their values."""
    from forgeflow.flows.connection_yaml import apply_settings, load_connection_yaml

    c = client()
    changes = load_connection_yaml(file) if file else {"name": name, "configs": {}, "secrets": {}}
    name = name or changes["name"]
    if not name:
        raise InvalidInput("update needs --name (or --file with a name)", field="name")
    if not file:
        changes["type"] = c.get(url_path("api", "connections", name))["type"]
    apply_settings(changes, _settings(set_, ctx.args))
    if not (changes["configs"] or changes["secrets"] or unset):
        raise InvalidInput("nothing to update: give --set, --unset or --file", field="set")
    body = {"configs": changes["configs"], "secrets": changes["secrets"], "remove": list(unset or [])}
    if file:
        body["type"] = changes["type"]
    out = c.patch(url_path("api", "connections", name), body)
    print_json(out) if json_out else console.print(f"[green]updated[/] connection {out['name']} ({out['type']})")


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
def show(name: str = typer.Option(..., "--name", help="The connection."), json_out: bool = JsonOpt) -> None:
    """A connection, secrets shown as ******."""
    out = client().get(url_path("api", "connections", name))
    print_json(out) if json_out else kv(out)


@app.command("delete")
@command
def delete(name: str = typer.Option(..., "--name", help="The connection."), json_out: bool = JsonOpt) -> None:
    """Delete a connection."""
    out = client().delete(url_path("api", "connections", name))
    print_json(out) if json_out else console.print(f"deleted connection {name}")
