"""`forgeflow online-deployment create/update` with several `--model`s and `--set gguf_type=...`, against the
real REST app in process: the list and the GGUF type reach the API, whose refusals the CLI reports."""

from __future__ import annotations

import shutil

import pytest
from in_process import in_process_cli
from tiny import build_tiny_adapter

from forgeflow.registry import models

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the .timeout. argument")


@pytest.fixture
def cli(monkeypatch, tmp_path, tiny_model_dir):
    from forgeflow.cli import endpoints

    adapter = build_tiny_adapter(tiny_model_dir, tmp_path / "adapter", seed=1)
    other_base = shutil.copytree(tiny_model_dir, tmp_path / "other-base")
    for name, base in (("tuned-a", tiny_model_dir), ("other", other_base)):
        folder = shutil.copytree(tiny_model_dir, tmp_path / name)
        shutil.copytree(adapter, folder / "adapter")
        models.register(name, folder, base_model=str(base))
    with in_process_cli(monkeypatch, (endpoints,), token=lambda ws: ws.admin_token()) as invoke:
        invoke("online-endpoint", "create", "--name", "ft-ep")
        yield invoke


def test_several_models_and_a_gguf_type_reach_the_api(cli):
    res = cli("online-deployment", "create", "--name", "blue", "--endpoint-name", "ft-ep",
              "--model", "tuned-a:1", "--model", "other:1", ok=False)
    assert res.exit_code == 1 and "do not share one base model" in res.output
    res = cli("online-deployment", "create", "--name", "blue", "--endpoint-name", "ft-ep",
              "--model", "tuned-a:1", "--set", "gguf_type=q8_0", ok=False)
    assert res.exit_code == 1 and "gguf_type" in res.output and "llamacpp" in res.output
    res = cli("online-deployment", "update", "--name", "blue", "--endpoint-name", "ft-ep", ok=False)
    assert res.exit_code == 1 and "nothing to update" in res.output
    res = cli("online-deployment", "update", "--name", "blue", "--endpoint-name", "ft-ep",
              "--model", "tuned-a:1", "--set", "model=other:1", ok=False)
    assert res.exit_code == 1 and "give the model once" in res.output
