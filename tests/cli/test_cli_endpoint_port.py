"""`forgeflow online-endpoint create/update --set port=...` and `show` against the real REST app in process."""

from __future__ import annotations

import json

import pytest
from endpoint_ports import free_endpoint_ports
from in_process import in_process_cli
from typer.testing import CliRunner

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the .timeout. argument")


@pytest.fixture
def cli(monkeypatch):
    from forgeflow.cli import endpoints

    with in_process_cli(monkeypatch, (endpoints,), prefix=("online-endpoint",),
                        token=lambda ws: ws.admin_token()) as invoke:
        yield invoke


def test_a_port_is_set_shown_moved_and_cleared(cli):
    port, other = free_endpoint_ports(2)
    out = cli("create", "--name", "port-ep", "--set", f"port={port}").stdout
    assert f"http://127.0.0.1:{port}/score" in out
    shown = json.loads(cli("show", "--name", "port-ep", "--json").stdout)
    assert shown["port"] == port and shown["port_scoring_uri"] == f"http://127.0.0.1:{port}/score"
    assert shown["host_scoring_uri"] == "http://port-ep.localhost:8765/score"
    assert shown["scoring_uri"].endswith("/endpoints/port-ep/score")
    assert f"port: {other}" in cli("update", "--name", "port-ep", "--set", f"port={other}").stdout
    cli("create", "--name", "other-ep")
    taken = cli("update", "--name", "other-ep", "--set", f"port={other}", ok=False)
    assert taken.exit_code != 0 and "port-ep" in taken.output
    shown = json.loads(cli("update", "--name", "port-ep", "--set", "port=null", "--json").stdout)
    assert shown["port"] is None and shown["port_scoring_uri"] is None


def test_bad_sets_name_the_field(cli):
    for args, word in ((("--set", "port=70000"), "65535"), (("--set", "port=abc"), "port"),
                       (("--set", "port=40000"), "9000-9999"), (("--set", "port=80"), "--endpoint-ports"),
                       (("--set", "traffic=1"), "settable are port")):
        res = cli("create", "--name", "bad-ep", *args, ok=False)
        assert res.exit_code != 0 and word in res.output, res.output


def test_serve_refuses_a_domain_that_is_no_dns_name():
    from forgeflow.cli.main import app

    res = CliRunner().invoke(app, ["serve", "--endpoint-domain", "not a domain"])
    assert res.exit_code != 0 and "endpoint domain" in res.output


def test_serve_refuses_a_port_range_it_cannot_read():
    from forgeflow.cli.main import app

    for bad in ("9100-9000", "0-80", "ports"):
        res = CliRunner().invoke(app, ["serve", "--endpoint-ports", bad])
        assert res.exit_code != 0 and "--endpoint-ports" in res.output, res.output
