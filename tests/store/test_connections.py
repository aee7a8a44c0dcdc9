from __future__ import annotations

import pytest

from forgeflow.errors import InvalidInput, NotFound
from forgeflow.processes import free_port
from forgeflow.store.connections import ConnectionStore, connection_provider
from forgeflow.store.workspace import Workspace


def test_update_merges_and_removes():
    store = ConnectionStore(Workspace.open())
    store.upsert("c", "custom", {"endpoint": "a", "timeout": 3}, {"key": "k"})
    out = store.update("c", {"endpoint": "b"}, {"other": "o"}, remove=["timeout"])
    assert out["configs"] == {"endpoint": "b"} and out["secrets"] == {"key": "******", "other": "******"}
    with pytest.raises(InvalidInput, match="no field"):
        store.update("c", remove=["secrets.nope"])
    with pytest.raises(NotFound):
        store.update("missing", {"a": "b"})


def test_provider_reads_the_local_store_without_a_server(monkeypatch):
    monkeypatch.setenv("FORGEFLOW_URL", f"http://127.0.0.1:{free_port()}")
    ConnectionStore(Workspace.open()).upsert("oa", "open_ai", {"base_url": "http://h/v1"}, {"api_key": "${env:OA_KEY}"})
    monkeypatch.setenv("OA_KEY", "sk-9")
    provide = connection_provider()
    assert provide("oa")["secrets"] == {"api_key": "${env:OA_KEY}"}  # the flow engine resolves it when used
    with pytest.raises(NotFound, match="nope"):
        provide("nope")
