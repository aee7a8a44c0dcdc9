"""Node variants over REST: a flow's variants in its graph, a test run of one variant, batch runs and their
metrics side by side (`/api/flow-runs`)."""

import json

import pytest
from flow_fixtures import (VARIANT_FLOW, FakeLLMServer, fresh_shim, no_proxy,  # noqa: F401 - fresh_shim is autouse
                           variant_connection)

from forgeflow.flows.batch import BatchRun, start_run
from forgeflow.store.connections import ConnectionStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def server(ws, monkeypatch):
    no_proxy(monkeypatch)
    fake = FakeLLMServer()
    ConnectionStore(ws).upsert("open_ai_connection", "open_ai", {"base_url": fake.base + "/v1"}, {"api_key": fake.key})
    yield fake
    fake.close()


async def test_a_test_run_of_one_variant(api, server):
    r = await api.post("/api/flows", json={"name": "tune", "path": str(VARIANT_FLOW)})
    assert r.status_code == 201, r.text
    chat = next(n for n in r.json()["nodes"] if n["name"] == "chat")
    assert chat["default_variant"] == "variant_0" and set(chat["variants"]) == {"variant_0", "variant_1", "variant_2"}

    r = await api.post("/api/flows/tune/test", json={"inputs": {"question": "Where is Vellmora?"},
                                                     "variant": "${chat.variant_2}"})
    assert r.status_code == 200, r.text
    assert r.json()["variant"] == "${chat.variant_2}"
    assert r.json()["outputs"]["answer"].startswith("echo: system=You are a patient geography tutor.")
    assert server.requests[-1]["body"]["max_tokens"] == 20

    for spec, words in (("${chat.variant_9}", "no variant 'variant_9'"), ("${nope.v}", "no node 'nope'"),
                        ("chat", "${NODE.VARIANT_ID}")):
        r = await api.post("/api/flows/tune/test", json={"inputs": {}, "variant": spec})
        assert r.status_code == 400 and r.json()["field"] == "variant" and words in r.json()["message"], r.text
    assert len(server.requests) == 1


async def test_runs_listed_shown_and_compared(api, server):
    for variant, accuracy in (("variant_0", 0.25), ("variant_2", 0.75)):
        record = start_run(VARIANT_FLOW, data=VARIANT_FLOW / "data.jsonl", variant="${chat.%s}" % variant,
                           name=f"tune-{variant}")
        BatchRun(record, connection_provider=variant_connection(server)).execute()
        record.write_metrics({"accuracy": accuracy})  # what an evaluation flow's log_metric would have stored

    listed = (await api.get("/api/flow-runs")).json()
    assert [(r["name"], r["variant"]) for r in listed] == [("tune-variant_0", "${chat.variant_0}"),
                                                          ("tune-variant_2", "${chat.variant_2}")]
    shown = (await api.get("/api/flow-runs/tune-variant_2")).json()
    assert shown["variant"] == "${chat.variant_2}" and shown["completed_lines"] == 3
    assert shown["metrics"] == {"accuracy": 0.75}

    r = await api.get("/api/flow-runs/compare", params=[("runs", "tune-variant_0"), ("runs", "tune-variant_2")])
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["metrics"] == ["accuracy"]
    assert [(x["name"], x["variant"], x["metrics"]) for x in out["runs"]] == [
        ("tune-variant_0", "${chat.variant_0}", {"accuracy": 0.25}),
        ("tune-variant_2", "${chat.variant_2}", {"accuracy": 0.75})]
    assert (await api.get("/api/flow-runs/compare?runs=tune-variant_0,tune-variant_2")).json() == out

    missing = await api.get("/api/flow-runs/compare?runs=tune-variant_0&runs=nope")
    assert missing.status_code == 404 and "nope" in missing.json()["message"]
    none = await api.get("/api/flow-runs/compare")
    assert none.status_code == 400 and none.json()["field"] == "runs"
    assert (await api.get("/api/flow-runs/nope")).status_code == 404
    assert server.key not in json.dumps(listed) + json.dumps(shown) + json.dumps(out)
