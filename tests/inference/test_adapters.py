"""Which adapter a request names (match_adapter, AdapterCatalog, parse_adapter_arg) and which adapters stay
loaded (LoadedAdapters: load on first use, least recently used let go, never one in use)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from forgeflow.errors import InvalidInput, NotFound
from forgeflow.inference.adapters import AdapterCatalog, LoadedAdapters, match_adapter, parse_adapter_arg

NAMES = ["tuned-a:1", "tuned-a:2", "tuned-b:3"]


def test_match_adapter_exact_name_and_single_version():
    assert match_adapter("tuned-a:2", NAMES) == "tuned-a:2"
    assert match_adapter("tuned-b", NAMES) == "tuned-b:3"
    assert match_adapter("tuned-b:3", NAMES) == "tuned-b:3"


def test_match_adapter_names_nothing_served():
    assert match_adapter(None, NAMES) is None
    assert match_adapter("", NAMES) is None
    assert match_adapter("my-deployment", NAMES) is None
    assert match_adapter("tuned-a:1", []) is None


def test_match_adapter_unserved_version_is_404_and_ambiguous_name_400():
    with pytest.raises(NotFound) as missing:
        match_adapter("tuned-b:9", NAMES)
    assert missing.value.field == "model" and "tuned-b:3" in str(missing.value)
    with pytest.raises(InvalidInput) as ambiguous:
        match_adapter("tuned-a", NAMES)
    assert ambiguous.value.field == "model" and "tuned-a:1" in str(ambiguous.value)


def test_match_adapter_reads_model_references_as_deploying_does():
    assert match_adapter("azureml:tuned-b:3", NAMES) == "tuned-b:3"
    assert match_adapter(" tuned-a:1 ", NAMES) == "tuned-a:1"
    assert match_adapter("tuned-a@latest", NAMES) == "tuned-a:2"  # the highest served
    assert match_adapter("azureml:tuned-b@latest", NAMES) == "tuned-b:3"
    for other in ("gpt-4", "ghost@stable", "tuned-a:beta", "ghost@latest", "tuned-a@v1"):
        assert match_adapter(other, NAMES) is None, other  # no reference to a served model: names none


def test_an_alias_of_a_served_fine_tune_is_a_400_asking_for_its_version():
    """A deployment is pinned to the version an alias named when it was made: per request, an alias (which may
    have moved since) is refused, naming the versions served, never served by the default adapter."""
    for model in ("tuned-a@champion", "azureml:tuned-a@challenger"):
        with pytest.raises(InvalidInput) as caught:
            match_adapter(model, NAMES)
        assert caught.value.field == "model" and "NAME:VERSION" in caught.value.message
        assert "tuned-a:1, tuned-a:2" in caught.value.message


def test_parse_adapter_arg():
    assert parse_adapter_arg("tuned-a:1=/models/a/adapter") == ("tuned-a:1", Path("/models/a/adapter"))
    for bad in ["tuned-a:1", "=/x", "tuned-a:1=", "tuned-a=/x"]:
        with pytest.raises(InvalidInput) as err:
            parse_adapter_arg(bad)
        assert err.value.field == "adapter"


def test_catalog_resolves_to_the_named_or_the_first(tmp_path):
    paths = {}
    for name in ["tuned-a:1", "tuned-b:3"]:
        folder = tmp_path / name.replace(":", "-")
        folder.mkdir()
        (folder / "adapter_config.json").write_text("{}")
        paths[name] = folder
    catalog = AdapterCatalog(paths)
    assert catalog.names == ["tuned-a:1", "tuned-b:3"]
    assert catalog.resolve("tuned-b") == "tuned-b:3"
    assert catalog.resolve("something-else") == "tuned-a:1"
    assert catalog.resolve(None) == "tuned-a:1"
    assert AdapterCatalog().resolve("tuned-b") is None


def test_catalog_refuses_a_folder_that_is_no_adapter(tmp_path):
    with pytest.raises(NotFound) as err:
        AdapterCatalog({"tuned-a:1": tmp_path})
    assert err.value.field == "adapter" and "adapter_config.json" in str(err.value)


class Recorder:
    def __init__(self):
        self.events = []

    def load(self, name):
        self.events.append(("load", name))
        return f"handle-{name}"

    def unload(self, name, handle):
        assert handle == f"handle-{name}"
        self.events.append(("unload", name))


def test_loads_once_and_evicts_the_least_recently_used():
    rec = Recorder()
    loaded = LoadedAdapters(rec.load, rec.unload, max_loaded=2)
    assert loaded.acquire("a") == "handle-a"
    loaded.release("a")
    loaded.acquire("b")
    loaded.release("b")
    loaded.acquire("a")  # a is now the most recently used
    loaded.release("a")
    assert rec.events == [("load", "a"), ("load", "b")]
    loaded.acquire("c")
    loaded.release("c")
    assert rec.events[-1] == ("unload", "b")
    assert loaded.loaded() == ["a", "c"]
    stats = loaded.stats()
    assert stats["loads"] == 3 and stats["evictions"] == 1 and stats["in_use"] == {}
    loaded.acquire("b")  # reloaded after its eviction
    assert rec.events[-2:] == [("load", "b"), ("unload", "a")]


def test_an_adapter_in_use_is_never_evicted():
    rec = Recorder()
    loaded = LoadedAdapters(rec.load, rec.unload, max_loaded=1)
    loaded.acquire("a")
    loaded.acquire("a")  # two uses
    loaded.acquire("b")
    assert loaded.loaded() == ["a", "b"]  # over the limit while both are in use
    assert loaded.stats()["in_use"] == {"a": 2, "b": 1}
    loaded.release("a")
    assert ("unload", "a") not in rec.events  # one use of a remains
    loaded.release("a")
    assert rec.events[-1] == ("unload", "a") and loaded.loaded() == ["b"]
    loaded.release("b")
    assert loaded.loaded() == ["b"]  # within the limit: kept for the next request
    loaded.clear()
    assert loaded.loaded() == [] and rec.events[-1] == ("unload", "b")


def test_max_loaded_must_be_positive():
    with pytest.raises(InvalidInput) as err:
        LoadedAdapters(lambda n: n, lambda n, h: None, max_loaded=0)
    assert err.value.field == "max_adapters"


def test_concurrent_acquire_loads_once():
    rec = Recorder()
    loaded = LoadedAdapters(rec.load, rec.unload, max_loaded=4)
    threads = [threading.Thread(target=loaded.acquire, args=("a",)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert rec.events == [("load", "a")] and loaded.stats()["in_use"] == {"a": 8}
