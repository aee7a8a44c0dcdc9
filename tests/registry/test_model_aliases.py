"""Registry aliases (MLflow's registered-model aliases): set, moved, removed, listed, read back as `NAME@ALIAS`
in the registry and over REST; bad names, an archived version and a missing alias are refused naming the field;
`NAME@latest` keeps meaning the newest live version."""

from __future__ import annotations

import httpx
import pytest

from forgeflow.api.app import create_app
from forgeflow.errors import Conflict, InvalidInput, NotFound
from forgeflow.registry import models
from forgeflow.store.workspace import Workspace

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def quill(tmp_path) -> list[models.ModelVersion]:
    """quill:1, quill:2, quill:3 (folders registered by path)."""
    folder = tmp_path / "quill"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return [models.register("quill", folder) for _ in range(3)]


def _aliases() -> dict[str, list[str]]:
    return {v.ref: v.aliases for v in models.list_models(include_archived=True)}


def test_aliases_are_set_moved_removed_and_resolved(quill):
    mv = models.update_version("quill:2", set_aliases=["champion", "challenger"])
    assert mv.aliases == ["challenger", "champion"]
    assert _aliases() == {"quill:1": [], "quill:2": ["challenger", "champion"], "quill:3": []}
    assert models.get_version("quill@champion").ref == "quill:2"
    assert models.get_version("azureml:quill@challenger").ref == "quill:2"

    models.update_version("quill:3", set_aliases=["champion"])  # one version at a time: it moves
    assert _aliases() == {"quill:1": [], "quill:2": ["challenger"], "quill:3": ["champion"]}
    assert models.get_version("quill@champion").ref == "quill:3"

    with pytest.raises(NotFound) as caught:
        models.update_version("quill:3", remove_aliases=["challenger"])
    assert caught.value.field == "alias" and "challenger names quill:2" in caught.value.message
    models.update_version("quill:3", remove_aliases=["champion"])
    with pytest.raises(NotFound) as caught:
        models.get_version("quill@champion")
    assert caught.value.field == "model" and "challenger -> quill:2" in caught.value.message
    assert "--set-alias champion" in caught.value.message


def test_latest_still_means_the_newest_live_version(quill):
    models.update_version("quill:1", set_aliases=["champion"])
    assert models.get_version("quill@latest").ref == "quill:3" == models.get_version("quill").ref
    models.set_archived("quill:3", True)
    assert models.get_version("quill@latest").ref == "quill:2"


@pytest.mark.parametrize("bad", ["latest", "LATEST", "v2", "V10", "1st", "two words", "a.b", "x" * 65, "",
                                 "caf\u00e9"])
def test_a_bad_alias_is_a_400_naming_alias_and_changes_nothing(quill, bad):
    with pytest.raises(InvalidInput) as caught:
        models.update_version("quill:1", description="changed", set_aliases=["champion", bad])
    assert caught.value.field == "alias"
    with pytest.raises(InvalidInput) as caught:
        models.update_version("quill:1", remove_aliases=[bad])
    assert caught.value.field == "alias"
    assert models.get_version("quill:1").description is None and _aliases()["quill:1"] == []


def test_a_bad_alias_in_a_model_reference_is_a_400_naming_model(quill):
    for ref in ("quill@v1", "quill@LATEST", "quill@no way"):
        with pytest.raises(InvalidInput) as caught:
            models.get_version(ref)
        assert caught.value.field == "model" and ref in caught.value.message


def test_an_archived_version_takes_no_alias_and_one_set_and_removed_at_once_is_refused(quill):
    models.set_archived("quill:1", True)
    with pytest.raises(Conflict) as caught:
        models.update_version("quill:1", set_aliases=["champion"])
    assert caught.value.field == "version" and "quill:1" in caught.value.message
    assert "model restore --name quill --version 1" in caught.value.message
    with pytest.raises(InvalidInput) as caught:
        models.update_version("quill:2", set_aliases=["champion"], remove_aliases=["champion"])
    assert caught.value.field == "alias"
    assert all(not aliases for aliases in _aliases().values())


def test_listing_reads_more_registered_models_than_one_search_page(tmp_path):
    """A registry search answers at most 100 models a page: the listing reads every page."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    for i in range(101):
        models.register(f"m{i:03d}", folder)
    models.update_version("m100:1", set_aliases=["champion"])
    listed = models.list_models()
    assert len(listed) == 101 and listed[-1].ref == "m100:1" and listed[-1].aliases == ["champion"]


@pytest.fixture
async def api():
    ws = Workspace.open()
    app = create_app(ws, background=False)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                     headers={"Authorization": f"Bearer {ws.admin_token()}"}) as c:
            yield c


async def test_aliases_over_rest(api, quill):
    r = await api.patch("/api/models/quill/versions/1", json={"set_aliases": ["champion"]})
    assert r.status_code == 200 and r.json()["aliases"] == ["champion"]
    r = await api.patch("/api/models/quill/versions/2", json={"set_aliases": ["champion"], "set_tags": {"a": "b"}})
    assert r.json()["aliases"] == ["champion"] and r.json()["tags"] == {"a": "b"}
    listed = {f"{m['name']}:{m['version']}": m["aliases"] for m in (await api.get("/api/models")).json()
              if m.get("kind") == "registered"}
    assert listed == {"quill:1": [], "quill:2": ["champion"], "quill:3": []}
    shown = (await api.get("/api/models/quill@champion")).json()
    assert shown["version"] == "2" and shown["aliases"] == ["champion"]

    r = await api.get("/api/models/quill@champion", params={"version": "1"})
    assert r.status_code == 400 and r.json()["field"] == "version"
    r = await api.get("/api/models/quill@nobody")
    assert r.status_code == 404 and r.json()["field"] == "model" and "champion -> quill:2" in r.json()["message"]
    r = await api.patch("/api/models/quill/versions/2", json={"set_aliases": ["latest"]})
    assert r.status_code == 400 and r.json()["field"] == "alias" and "reserved" in r.json()["message"]
    r = await api.patch("/api/models/quill/versions/1", json={"remove_aliases": ["champion"]})
    assert r.status_code == 404 and r.json()["field"] == "alias" and "quill:2" in r.json()["message"]
    r = await api.patch("/api/models/quill/versions/2", json={"remove_aliases": ["champion"]})
    assert r.status_code == 200 and r.json()["aliases"] == []
