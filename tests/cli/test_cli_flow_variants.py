"""`flow test / chat / run --variant '${node.variant_id}'` and `flow run compare` through the CLI, against an
OpenAI-compatible server on loopback that echoes the prompt it got."""

from __future__ import annotations

import json
import shutil

import pytest
from flow_fixtures import VARIANT_FLOW, FakeLLMServer, fresh_shim, no_proxy  # noqa: F401 - fresh_shim is autouse
from typer.testing import CliRunner

from forgeflow.cli.main import app
from forgeflow.store.connections import ConnectionStore
from forgeflow.store.workspace import Workspace

runner = CliRunner()


@pytest.fixture
def server(monkeypatch):
    """The fake server and the flow's `open_ai_connection` in the local store (no forgeflow server runs)."""
    no_proxy(monkeypatch)
    monkeypatch.setenv("FORGEFLOW_URL", "http://127.0.0.1:9")
    fake = FakeLLMServer()
    ConnectionStore(Workspace.open()).upsert("open_ai_connection", "open_ai", {"base_url": fake.base + "/v1"},
                                             {"api_key": fake.key})
    yield fake
    fake.close()


@pytest.fixture
def flow(tmp_path):
    return shutil.copytree(VARIANT_FLOW, tmp_path / "prompt_variants")


def invoke(*args: str, ok: bool = True):
    res = runner.invoke(app, ["flow", *args])
    if ok:
        assert res.exit_code == 0, res.output
    return res


def test_flow_test_runs_the_picked_variant(server, flow):
    out = json.loads(invoke("test", "--flow", str(flow), "--variant", "${chat.variant_1}", "--json").stdout)
    assert out["variant"] == "${chat.variant_1}"
    assert out["outputs"]["answer"].startswith('echo: system=Reply with JSON holding "answer" and "reason".')
    assert server.requests[-1]["body"]["max_tokens"] == 9
    shown = invoke("test", "--flow", str(flow), "--variant", "'${chat.variant_2}'").stdout
    assert "variant ${chat.variant_2}" in shown and "geography tutor" in shown
    default = json.loads(invoke("test", "--flow", str(flow), "--json").stdout)
    assert default["variant"] is None and default["outputs"]["answer"].startswith("echo: system=Answer in one word.")


@pytest.mark.parametrize("spec, words", [("${chat.variant_9}", "node 'chat' has no variant 'variant_9'"),
                                         ("${nope.variant_1}", "has no node 'nope'"),
                                         ("variant_1", "${NODE.VARIANT_ID}")])
def test_an_unknown_variant_is_one_red_line(server, flow, spec, words):
    res = invoke("test", "--flow", str(flow), "--variant", spec, ok=False)
    assert res.exit_code == 1 and words in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert server.requests == []


def test_chat_with_a_variant(server, flow):
    res = runner.invoke(app, ["flow", "chat", "--flow", str(flow), "--variant", "${chat.variant_2}", "--json"],
                        input="Where is Vellmora?\n")
    assert res.exit_code == 0, res.output
    [turn] = json.loads(res.stdout)["chat_history"]
    assert turn["outputs"]["answer"].startswith("echo: system=You are a patient geography tutor.")


def test_a_batch_run_per_variant_then_compare(server, flow, monkeypatch):
    from forgeflow.cli.common import console

    monkeypatch.setattr(console, "_width", 250)  # the side-by-side table on one line per row
    names = []
    for variant in ("variant_0", "variant_1", "variant_2"):
        out = json.loads(invoke("run", "--flow", str(flow), "--data", str(flow / "data.jsonl"), "--variant",
                                "${chat.%s}" % variant, "--name", f"tune-{variant}", "--json").stdout)
        assert out["status"] == "Completed" and out["completed_lines"] == 3 and out["variant"] == "${chat.%s}" % variant
        names.append(out["name"])
    assert {r["body"]["max_tokens"] for r in server.requests} == {3, 9, 20}
    listed = {r["name"]: r["variant"] for r in json.loads(invoke("run", "list", "--json").stdout)}
    assert listed == {f"tune-{v}": "${chat.%s}" % v for v in ("variant_0", "variant_1", "variant_2")}
    assert json.loads(invoke("run", "show", "tune-variant_1", "--json").stdout)["variant"] == "${chat.variant_1}"

    compared = json.loads(invoke("run", "compare", names[0], ",".join(names[1:]), "--json").stdout)
    assert [r["name"] for r in compared["runs"]] == names
    assert [r["variant"] for r in compared["runs"]] == ["${chat.variant_0}", "${chat.variant_1}", "${chat.variant_2}"]
    table = invoke("run", "compare", *names).stdout
    assert all(name in table for name in names) and "${chat.variant_2}" in table and "3 completed, 0 failed" in table
    missing = invoke("run", "compare", names[0], "nope", ok=False)
    assert missing.exit_code == 1 and "no flow run named 'nope'" in missing.output


def test_a_run_with_an_unknown_variant_is_refused_before_it_starts(server, flow):
    res = invoke("run", "--flow", str(flow), "--data", str(flow / "data.jsonl"), "--variant", "${chat.v9}", ok=False)
    assert res.exit_code == 1 and "no variant 'v9'" in res.output
    assert json.loads(invoke("run", "list", "--json").stdout) == []
