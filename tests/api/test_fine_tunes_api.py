"""A deployment's `model` as a list of registered fine-tunes of one base, and its `gguf_type`, at the REST edge:
what cannot be served together, or with that runtime, is a 400 naming the field, before anything starts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tiny import build_tiny_adapter

from forgeflow.errors import InvalidInput
from forgeflow.registry import models
from forgeflow.registry.resolve import resolve_models

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir) -> list[Path]:
    root = tmp_path_factory.mktemp("adapters")
    return [build_tiny_adapter(tiny_model_dir, root / f"seed{seed}", seed=seed) for seed in (1, 2)]


def _fine_tune(tmp_path: Path, base: Path, name: str, adapter: Path | None) -> Path:
    """A registered version's folder: the checkpoint, and its LoRA adapter beside it in adapter/ when it has one."""
    folder = shutil.copytree(base, tmp_path / name)
    if adapter is not None:
        shutil.copytree(adapter, folder / "adapter")
    return folder


@pytest.fixture
def registered(tmp_path, tiny_model_dir, adapters):
    """tuned-a:1 and tuned-b:1 (LoRA fine-tunes of the tiny model), full:1 (no adapter), other:1 (a LoRA
    fine-tune of another base folder), orphan:1 (a LoRA fine-tune that does not record its base)."""
    other_base = shutil.copytree(tiny_model_dir, tmp_path / "other-base")
    for name, adapter, base in (("tuned-a", adapters[0], tiny_model_dir), ("tuned-b", adapters[1], tiny_model_dir),
                                ("full", None, tiny_model_dir), ("other", adapters[0], other_base),
                                ("orphan", adapters[1], None)):
        models.register(name, _fine_tune(tmp_path, tiny_model_dir, name, adapter),
                        base_model=str(base) if base else None)
    return tmp_path


def test_fine_tunes_of_one_base_resolve_to_the_base_folder_and_their_adapters(registered, tiny_model_dir):
    ref, path, found = resolve_models(["tuned-a:1", "tuned-b"])
    assert (ref, path) == (str(tiny_model_dir), tiny_model_dir.resolve())
    assert found == {"tuned-a:1": str((registered / "tuned-a" / "adapter").resolve()),
                     "tuned-b:1": str((registered / "tuned-b" / "adapter").resolve())}
    assert resolve_models("tuned-a:1")[2] == {}  # one model: its merged folder, no adapters
    with pytest.raises(InvalidInput) as caught:
        resolve_models(["tuned-a:1", "orphan:1"])
    assert caught.value.field == "model" and "base model" in caught.value.message


def test_a_list_of_fine_tunes_lists_the_registry_once(registered, monkeypatch):
    calls = []
    listing = models.list_models
    monkeypatch.setattr(models, "list_models", lambda **kw: calls.append(kw) or listing(**kw))
    assert list(resolve_models(["tuned-a:1", "tuned-b:1"])[2]) == ["tuned-a:1", "tuned-b:1"]
    assert len(calls) == 1
    with pytest.raises(InvalidInput) as caught:
        resolve_models([])
    assert caught.value.field == "model"


REFUSED = [
    (["tuned-a:1", "other:1"], "do not share one base model"),
    (["tuned-a:1", "full:1"], "has no LoRA adapter"),
    (["tuned-a:1", "tuned-a:1"], "twice"),
    (["tuned-a:1", "tuned-a"], "twice"),
    (["tuned-a:1", 7], "list of registered"),
    ([f"tuned-{i}:1" for i in range(65)], "at most 64"),
    (["tuned-a:1", "ghost:1"], "ghost"),
    (["tuned-a:1", "orphan:1"], "does not record its base model"),
    ({"tuned-a": 1}, "list of registered"),
]


async def test_models_that_cannot_share_a_deployment_are_refused_naming_model(api, registered):
    await api.post("/api/endpoints", json={"name": "ft-ep"})
    for model, says in REFUSED:
        r = await api.post("/api/endpoints/ft-ep/deployments", json={"name": "blue", "model": model})
        assert r.status_code == (404 if "ghost" in says else 400), r.text
        assert r.json()["field"] == "model" and says in r.json()["message"], r.text
    assert (await api.get("/api/endpoints/ft-ep/deployments")).json() == []


async def test_a_gguf_type_the_runtime_cannot_serve_is_refused_naming_gguf_type(api, registered):
    await api.post("/api/endpoints", json={"name": "gguf-ep"})
    for fields in ({"gguf_type": "q8_0"}, {"runtime": "transformers", "gguf_type": "f16"},
                   {"runtime": "llamacpp", "gguf_type": "q5_1"}, {"runtime": "llamacpp", "gguf_type": 4}):
        r = await api.post("/api/endpoints/gguf-ep/deployments", json={"name": "blue", "model": "tuned-a:1", **fields})
        assert r.status_code == 400 and r.json()["field"] == "gguf_type", r.text
    assert (await api.get("/api/endpoints/gguf-ep/deployments")).json() == []


async def test_a_field_a_deployment_does_not_have_is_refused_naming_it(api, registered):
    await api.post("/api/endpoints", json={"name": "extra-ep"})
    r = await api.post("/api/endpoints/extra-ep/deployments", json={"name": "blue", "model": "tuned-a:1",
                                                                    "quantization": "q8_0"})
    assert r.status_code == 400 and r.json()["field"] == "quantization", r.text
    assert (await api.get("/api/endpoints/extra-ep/deployments")).json() == []
    r = await api.patch("/api/endpoints/extra-ep/deployments/blue", json={"set": {}, "adapters": ["tuned-b:1"]})
    assert r.status_code == 400 and r.json()["field"] == "adapters", r.text


@pytest.fixture
def stop_instances(app):
    """A created deployment starts its instances even without the background threads: stop them after the test."""
    yield
    app.state.ff.supervisor.shutdown()


def test_an_alias_in_a_list_of_fine_tunes_resolves_to_the_version_it_names(registered):
    models.update_version("tuned-b:1", set_aliases=["champion"])
    assert list(resolve_models(["tuned-a:1", "tuned-b@champion"])[2]) == ["tuned-a:1", "tuned-b:1"]
    with pytest.raises(InvalidInput) as caught:
        resolve_models(["tuned-b:1", "tuned-b@champion"])
    assert caught.value.field == "model" and "twice" in caught.value.message


async def test_a_deployment_of_an_alias_is_pinned_to_the_version_it_named(api, registered, tiny_model_dir, adapters,
                                                                          stop_instances):
    await api.post("/api/endpoints", json={"name": "alias-ep"})
    models.update_version("tuned-a:1", set_aliases=["champion"])
    r = await api.post("/api/endpoints/alias-ep/deployments", json={"name": "blue", "model": "tuned-a@champion"})
    assert r.status_code == 201 and r.json()["model"] == "tuned-a:1", r.text

    second = models.register("tuned-a", _fine_tune(registered / "v2", tiny_model_dir, "tuned-a", adapters[1]),
                             base_model=str(tiny_model_dir))
    models.update_version(second.ref, set_aliases=["champion"])  # the alias moves; the deployment stays
    assert (await api.get("/api/endpoints/alias-ep/deployments/blue")).json()["model"] == "tuned-a:1"

    r = await api.post("/api/endpoints/alias-ep/deployments", json={"name": "green", "model": "tuned-a@ghost"})
    assert r.status_code == 404 and r.json()["field"] == "model" and "champion -> tuned-a:2" in r.json()["message"]
    models.set_archived("tuned-a:2", True)
    r = await api.post("/api/endpoints/alias-ep/deployments", json={"name": "green", "model": "tuned-a@champion"})
    assert r.status_code == 409 and r.json()["field"] == "model", r.text
    assert "tuned-a:2, which is archived" in r.json()["message"] and "--set-alias champion" in r.json()["message"]
    r = await api.post("/api/endpoints/alias-ep/deployments", json={"name": "green", "model": "tuned-a@latest"})
    assert r.status_code == 201 and r.json()["model"] == "tuned-a:1", r.text  # the newest live version
