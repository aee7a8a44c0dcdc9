"""`forgeflow connection ...` against the real REST app in process (no server process)."""

from __future__ import annotations

import json
import stat

import pytest
from flow_fixtures import fresh_shim  # noqa: F401 - autouse
from in_process import in_process_cli
from typer.testing import CliRunner

from forgeflow.cli import flows as cli_flows
from forgeflow.errors import NotFound
from forgeflow.processes import free_port
from forgeflow.store.connections import ConnectionStore, local_connection_lookup
from forgeflow.store.workspace import Workspace

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the .timeout. argument")
runner = CliRunner()


@pytest.fixture
def cli(monkeypatch):
    """Run `forgeflow connection ...` through an in-process app, as the owner."""
    from forgeflow.cli import connections

    with in_process_cli(monkeypatch, (connections,), prefix=("connection",), token=lambda ws: ws.admin_token()) as invoke:
        yield invoke


def test_open_ai_from_set_without_a_file(cli):
    cli("create", "--name", "ep", "--type", "open_ai", "--set", "api_key=sk-123", "base_url=http://h/v1",
        "organization=org")
    shown = json.loads(cli("show", "--name", "ep", "--json").stdout)
    assert shown["type"] == "open_ai"
    assert shown["configs"] == {"base_url": "http://h/v1", "organization": "org"}
    assert shown["secrets"] == {"api_key": "******"}
    assert "sk-123" not in cli("show", "--name", "ep").stdout
    assert local_connection_lookup()("ep")["secrets"] == {"api_key": "sk-123"}


def test_azure_open_ai_fields_and_unknown_plain_name(cli):
    cli("create", "--name", "az", "--type", "azure_open_ai", "--set", "api_key=k", "--set", "api_base=https://a",
        "--set", "api_type=azure", "--set", "api_version=2024-02-01")
    shown = json.loads(cli("show", "--name", "az", "--json").stdout)
    assert shown["configs"] == {"api_base": "https://a", "api_type": "azure", "api_version": "2024-02-01"}
    bad = cli("create", "--name", "x", "--type", "open_ai", "--set", "api_key=k", "endpoint=e", ok=False)
    assert bad.exit_code == 1 and "base_url" in bad.output
    missing = cli("create", "--name", "y", "--type", "open_ai", "--set", "base_url=u", ok=False)
    assert missing.exit_code == 1 and "api_key" in missing.output
    unsplit = cli("create", "--name", "z", "--set", "api_key", ok=False)
    assert unsplit.exit_code == 1 and "--set 'api_key': expected NAME=VALUE" in unsplit.output


def test_custom_from_yaml_then_update_merges(cli, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: custom-phi3\ntype: custom\nconfigs:\n  endpoint: http://a/score\n"
                    "secrets:\n  key: ${env:PHI3_KEY}\n")
    cli("create", "-f", str(path), "--set", "configs.timeout=30")
    cli("update", "--name", "custom-phi3", "--set", "configs.endpoint=http://b/score", "secrets.extra=s2")
    shown = json.loads(cli("show", "--name", "custom-phi3", "--json").stdout)
    assert shown["configs"] == {"endpoint": "http://b/score", "timeout": "30"}
    assert shown["secrets"] == {"key": "******", "extra": "******"}
    cli("update", "--name", "custom-phi3", "--unset", "configs.timeout")
    listed = json.loads(cli("list", "--json").stdout)
    assert [c["name"] for c in listed] == ["custom-phi3"] and listed[0]["configs"] == {"endpoint": "http://b/score"}
    assert "nothing to update" in cli("update", "--name", "custom-phi3", ok=False).output
    assert cli("update", "--name", "nope", "--set", "configs.a=1", ok=False).exit_code == 1
    dup = cli("create", "-f", str(path), ok=False)
    assert dup.exit_code == 1 and "already exists" in dup.output
    cli("delete", "--name", "custom-phi3")
    assert json.loads(cli("list", "--json").stdout) == []


def test_env_values_resolve_at_run_time_with_a_clear_error(cli, tmp_path, monkeypatch):
    from forgeflow.flows.executor import run_flow

    cli("create", "--name", "c", "--set", "configs.endpoint=${env:EP_URL}", "secrets.key=${env:EP_KEY}")
    flow = tmp_path / "flow"
    flow.mkdir()
    (flow / "flow.dag.yaml").write_text(
        "inputs: {}\noutputs:\n  out:\n    type: string\n    reference: ${show.output}\n"
        "nodes:\n- name: show\n  type: python\n  source: {type: code, path: show.py}\n  inputs:\n    connection: c\n"
    )
    (flow / "show.py").write_text(
        "from promptflow import tool\nfrom promptflow.connections import CustomConnection\n\n"
        "@tool\ndef show(connection: CustomConnection) -> str:\n    return connection.endpoint + ' ' + connection.key\n"
    )
    provide = local_connection_lookup()
    monkeypatch.delenv("EP_KEY", raising=False)
    monkeypatch.setenv("EP_URL", "http://x/score")
    with pytest.raises(Exception) as info:
        run_flow(flow, {}, connection_provider=provide)
    assert "EP_KEY" in str(info.value) and "'c'" in str(info.value)
    monkeypatch.setenv("EP_KEY", "s3cret")
    assert run_flow(flow, {}, connection_provider=provide).outputs == {"out": "http://x/score s3cret"}
    # stored as written
    assert json.loads(cli("show", "--name", "c", "--json").stdout)["configs"] == {"endpoint": "${env:EP_URL}"}


def test_secrets_are_encrypted_at_rest(cli):
    cli("create", "--name", "c", "--set", "secrets.key=plain-text-secret")
    ws = Workspace.open()
    assert stat.S_IMODE(ws.paths.secret_key.stat().st_mode) == 0o600
    assert b"plain-text-secret" not in ws.paths.db.read_bytes()


def test_flow_commands_ask_the_server_first_once_per_name(monkeypatch):
    asked = []

    class Server:
        def connection(self, name):
            asked.append(name)
            return {"name": name, "type": "custom", "configs": {}, "secrets": {"key": "from-server"}}

    monkeypatch.setattr(cli_flows, "client", Server)
    lookup = cli_flows.connection_lookup()
    assert lookup("c")["secrets"] == {"key": "from-server"} and lookup("c") == lookup("c")
    assert asked == ["c"]


def test_flow_commands_read_the_local_store_without_a_server(monkeypatch):
    monkeypatch.setenv("FORGEFLOW_URL", f"http://127.0.0.1:{free_port()}")
    ConnectionStore(Workspace.open()).upsert("oa", "open_ai", {"base_url": "http://h/v1"}, {"api_key": "${env:OA_KEY}"})
    monkeypatch.setenv("OA_KEY", "sk-9")
    lookup = cli_flows.connection_lookup()
    assert lookup("oa")["secrets"] == {"api_key": "${env:OA_KEY}"}  # the flow engine resolves it when used
    with pytest.raises(NotFound, match="nope"):
        lookup("nope")

    def no_server():
        raise AssertionError("the server is not asked again once it did not answer")

    monkeypatch.setattr(cli_flows, "client", no_server)
    with pytest.raises(NotFound, match="other"):
        lookup("other")
