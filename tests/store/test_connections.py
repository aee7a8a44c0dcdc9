from __future__ import annotations

import pytest

from forgeflow.errors import InvalidInput, NotFound
from forgeflow.store.connections import ConnectionStore, local_connection_lookup
from forgeflow.store.workspace import Workspace


def test_update_merges_and_removes(database_url):
    store = ConnectionStore(Workspace.open())
    store.upsert("c", "custom", {"endpoint": "a", "timeout": 3}, {"key": "k"})
    out = store.update("c", {"endpoint": "b"}, {"other": "o"}, remove=["timeout"])
    assert out["configs"] == {"endpoint": "b"} and out["secrets"] == {"key": "******", "other": "******"}
    with pytest.raises(InvalidInput, match="no field"):
        store.update("c", remove=["secrets.nope"])
    with pytest.raises(NotFound):
        store.update("missing", {"a": "b"})


def test_local_lookup_decrypts_keeps_env_references_and_reads_each_name_once(database_url):
    store = ConnectionStore(Workspace.open())
    store.upsert("oa", "open_ai", {"base_url": "http://h/v1"}, {"api_key": "${env:OA_KEY}"})
    lookup = local_connection_lookup()
    assert lookup("oa")["secrets"] == {"api_key": "${env:OA_KEY}"}  # the flow engine resolves it when used
    store.upsert("oa", "open_ai", {"base_url": "http://other/v1"}, {"api_key": "k"}, replace=True)
    assert lookup("oa")["configs"] == {"base_url": "http://h/v1"}
    with pytest.raises(NotFound, match="nope"):
        lookup("nope")
