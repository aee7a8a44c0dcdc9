"""`forgeflow model update --set-alias/--remove-alias` and `NAME@ALIAS` in `model show`, `list`, `download` and
`export`, through the real REST app in process."""

from __future__ import annotations

import json
import shutil

import pytest
from in_process import in_process_cli

from forgeflow.registry import models

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the .timeout. argument")


@pytest.fixture
def cli(monkeypatch, tiny_model_dir, tmp_path):
    """quill:1 and quill:2 (the tiny checkpoint registered by path); `forgeflow model ...` as the owner."""
    from forgeflow.cli import models as cli_models

    with in_process_cli(monkeypatch, (cli_models,), prefix=("model",), token=lambda ws: ws.admin_token()) as invoke:
        folder = shutil.copytree(tiny_model_dir, tmp_path / "quill")
        models.register("quill", folder)
        models.register("quill", folder)
        yield invoke


def test_aliases_are_set_shown_and_moved(cli):
    res = cli("update", "--name", "quill", "--version", "1", "--set-alias", "champion", "--set-alias", "challenger")
    assert "quill:1 (aliases: challenger, champion)" in res.output
    moved = json.loads(cli("update", "--name", "quill", "--version", "2", "--set-alias", "champion", "--json").stdout)
    assert moved["version"] == "2" and moved["aliases"] == ["champion"]
    shown = json.loads(cli("show", "quill@champion", "--json").stdout)
    assert shown["version"] == "2" and shown["aliases"] == ["champion"]
    assert "aliases: challenger" in cli("show", "quill:1").output
    listed = {m["version"]: m["aliases"] for m in json.loads(cli("list", "--json").stdout) if m.get("kind") != "base"}
    assert listed == {"1": ["challenger"], "2": ["champion"]}


def test_alias_mistakes_are_one_line_saying_what_to_do(cli):
    cli("update", "--name", "quill", "--version", "2", "--set-alias", "champion")
    res = cli("update", "--name", "quill", "--version", "1", "--remove-alias", "champion", ok=False)
    assert res.exit_code == 1 and "no alias 'champion'" in res.output and "quill:2" in res.output
    res = cli("update", "--name", "quill", "--version", "1", "--set-alias", "v1", ok=False)
    assert res.exit_code == 1 and "reserved" in res.output
    res = cli("update", "--name", "quill", "--version", "1", ok=False)
    assert res.exit_code == 1 and "--set-alias" in res.output
    res = cli("show", "quill@nobody", ok=False)
    assert res.exit_code == 1 and "champion -> quill:2" in res.output


def test_download_and_export_take_an_alias(cli, tmp_path):
    cli("update", "--name", "quill", "--version", "1", "--set-alias", "champion")
    got = json.loads(cli("download", "--name", "quill", "--version", "champion", "--out", str(tmp_path / "dl"),
                         "--json").stdout)
    assert got["version"] == "1" and (tmp_path / "dl" / "config.json").is_file()
    out = tmp_path / "st"
    got = json.loads(cli("export", "quill@champion", "--format", "safetensors", "--out", str(out), "--json").stdout)
    assert got["version"] == "1" and (out / "config.json").is_file()
