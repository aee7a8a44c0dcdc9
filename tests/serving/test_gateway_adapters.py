"""The gateway in front of a deployment serving several fine-tunes of one base (fake model servers): a request
naming a fine-tune goes to the deployment serving it, /score's model header reaches the instance (and no other
client header does), /v1/models lists the fine-tunes, and a new model list rolls the deployment."""

from __future__ import annotations

import json

import httpx
from gateway_harness import CHAT, FAST_LIVENESS, FAST_PROBES, SCORE, post

from forgeflow.inference.adapters import MODEL_HEADER

ADAPTERS = {"tuned-a:1": "/m/tuned-a/1/adapter", "tuned-b:3": "/m/tuned-b/3/adapter"}


def _deploy(gateway, endpoint: str, name: str, config: dict, adapters: dict | None = None,
            ref: str = "fake:1") -> dict:
    gateway.svc.create_deployment(endpoint, name, "base" if adapters else ref, json.dumps(config),
                                  liveness_probe=FAST_LIVENESS, readiness_probe=FAST_PROBES, adapters=adapters)
    return gateway.wait(endpoint, name)


def test_a_fine_tunes_name_routes_to_its_deployment_and_the_model_header_reaches_it(gateway):
    key = gateway.endpoint("ft-ep")
    _deploy(gateway, "ft-ep", "blue", {"output": "B", "headers": True})
    shown = _deploy(gateway, "ft-ep", "green", {"output": "G", "headers": True}, ADAPTERS)
    assert shown["model"] == ["tuned-a:1", "tuned-b:3"] and shown["adapters"] == ADAPTERS
    assert shown["base_model"] == "base" and shown["gguf_type"] is None
    gateway.svc.update_endpoint("ft-ep", traffic={"blue": 100})

    for model in ("tuned-a", "tuned-a:1", "tuned-b:3"):
        r = post(gateway, "ft-ep", key, CHAT | {"model": model}, path="v1/chat/completions")
        assert r.status_code == 200 and r.headers["azureml-model-deployment"] == "green", model
    r = post(gateway, "ft-ep", key, CHAT | {"model": "gpt-4"}, path="v1/chat/completions")
    assert r.headers["azureml-model-deployment"] == "blue"

    r = post(gateway, "ft-ep", key, headers={MODEL_HEADER: "tuned-b:3", "x-private": "not for the instance"})
    assert r.status_code == 200 and r.headers["azureml-model-deployment"] == "green"
    seen = r.json()["headers"]
    assert seen[MODEL_HEADER] == "tuned-b:3" and "x-private" not in seen
    r = post(gateway, "ft-ep", key, headers={"x-private": "not for the instance"})
    assert r.json()["output"] == "B" and MODEL_HEADER not in r.json()["headers"]
    assert "x-private" not in r.json()["headers"]


def test_the_endpoints_models_list_the_fine_tunes_and_a_new_list_rolls_the_deployment(gateway):
    key = gateway.endpoint("list-ep")
    _deploy(gateway, "list-ep", "green", {"output": "G"}, ADAPTERS)
    auth = {"Authorization": f"Bearer {key}"}
    models = httpx.get(f"{gateway.url}/endpoints/list-ep/v1/models", headers=auth).json()["data"]
    assert [m["id"] for m in models] == ["green", "tuned-a:1", "tuned-b:3"]
    assert all(m["parent"] == "green" for m in models[1:])
    info = httpx.get(f"{gateway.url}/endpoints/list-ep/info", headers=auth | {"azureml-model-deployment": "green"})
    assert info.json()["model_name"] == "tuned-a:1"  # the default fine-tune, not the base
    card = httpx.get(f"{gateway.url}/endpoints/list-ep/v1/models/tuned-b:3", headers=auth).json()
    assert card["id"] == "tuned-b:3" and card["parent"] == "green"
    missing = httpx.get(f"{gateway.url}/endpoints/list-ep/v1/models/tuned-c:1", headers=auth)
    assert missing.status_code == 404 and "tuned-a:1" in missing.json()["error"]["message"]

    more = ADAPTERS | {"tuned-c:1": "/m/tuned-c/1/adapter"}
    gateway.svc.update_deployment("list-ep", "green", {"model": list(more)},
                                  resolve=lambda refs: ("base", json.dumps({"output": "G2"}), more))
    shown = gateway.wait("list-ep", "green")
    assert shown["model"] == list(more)
    gateway.svc.update_endpoint("list-ep", traffic={"green": 100})
    r = post(gateway, "list-ep", key, SCORE)
    assert r.json()["output"] == "G2"  # the new instances serve it
    models = httpx.get(f"{gateway.url}/endpoints/list-ep/v1/models", headers=auth).json()["data"]
    assert [m["id"] for m in models] == ["green", *more]


def test_a_fine_tune_deployed_alone_or_on_two_deployments_routes_and_lists_as_routing_does(gateway):
    key = gateway.endpoint("one-ep")
    _deploy(gateway, "one-ep", "blue", {"output": "A"}, ref="tuned-a:1")  # merged, alone
    _deploy(gateway, "one-ep", "green", {"output": "G"}, {"tuned-b:1": "/m/b", "tuned-c:1": "/m/c"})
    _deploy(gateway, "one-ep", "teal", {"output": "T"}, {"tuned-c:1": "/m/c"})
    gateway.svc.update_endpoint("one-ep", traffic={"green": 100})
    for model, deployment in (("tuned-a:1", "blue"), ("tuned-a", "blue"), ("azureml:tuned-a:1", "blue"),
                              ("tuned-a@latest", "blue"), ("tuned-b:1", "green"), (" tuned-b:1 ", "green")):
        r = post(gateway, "one-ep", key, CHAT | {"model": model}, path="v1/chat/completions")
        assert r.status_code == 200 and r.headers["azureml-model-deployment"] == deployment, model
    # an alias of a served fine-tune: a 400 naming model in the route's dialect, never the traffic split's draw
    r = post(gateway, "one-ep", key, CHAT | {"model": "tuned-a@champion"}, path="v1/chat/completions")
    assert r.status_code == 400 and r.json()["error"]["param"] == "model", r.text
    assert "tuned-a:1" in r.json()["error"]["message"] and "NAME:VERSION" in r.json()["error"]["message"]
    r = post(gateway, "one-ep", key, headers={MODEL_HEADER: "tuned-c@champion"})
    assert r.status_code == 400 and r.json()["field"] == "model" and "tuned-c:1" in r.json()["message"], r.text

    auth = {"Authorization": f"Bearer {key}"}
    models = httpx.get(f"{gateway.url}/endpoints/one-ep/v1/models", headers=auth).json()["data"]
    assert [m["id"] for m in models] == ["blue", "green", "teal", "tuned-a:1", "tuned-b:1", "tuned-c:1"]
    parents = {m["id"]: m.get("parent") for m in models[3:]}
    assert parents == {"tuned-a:1": "blue", "tuned-b:1": "green", "tuned-c:1": None}  # two serve tuned-c:1


def test_a_model_header_that_names_no_model_is_a_400_naming_it_in_the_routes_dialect(gateway):
    key = gateway.endpoint("hdr-ep")
    _deploy(gateway, "hdr-ep", "green", {"output": "G"}, ADAPTERS)
    gateway.svc.update_endpoint("hdr-ep", traffic={"green": 100})
    for value in ("tuned-\u00e9:1".encode(), b"tuned a:1", b"../etc"):
        r = post(gateway, "hdr-ep", key, headers={MODEL_HEADER: value})
        assert r.status_code == 400 and r.json()["field"] == MODEL_HEADER, (value, r.text)
        r = post(gateway, "hdr-ep", key, CHAT, path="v1/chat/completions", headers={MODEL_HEADER: value})
        assert r.status_code == 400 and r.json()["error"]["param"] == MODEL_HEADER, (value, r.text)
    r = post(gateway, "hdr-ep", key, CHAT, path="chat/completions", headers={MODEL_HEADER: "tuned-b:3"})
    assert r.status_code == 200 and r.headers["azureml-model-deployment"] == "green"


def _pids(gateway, endpoint: str, name: str) -> set[int]:
    return {i["pid"] for i in gateway.svc.show_deployment(endpoint, name)["instances"]}


def test_a_new_default_fine_tune_rolls_through_either_server_and_a_change_of_nothing_settles(gateway,
                                                                                              follower_gateway):
    """The first adapter is the default, so the same fine-tunes in another order are a new deployment."""
    leader, follower = gateway, follower_gateway
    follower.endpoint("order-ep")
    _deploy(follower, "order-ep", "green", {"output": "G"}, ADAPTERS)
    for server, order in ((leader, ["tuned-b:3", "tuned-a:1"]), (follower, ["tuned-a:1", "tuned-b:3"])):
        before = _pids(leader, "order-ep", "green")
        server.svc.update_deployment("order-ep", "green", {"model": order},
                                     resolve=lambda refs: ("base", json.dumps({"output": "G"}),
                                                           {ref: ADAPTERS[ref] for ref in refs}))
        shown = server.wait("order-ep", "green", timeout=15)
        assert shown["model"] == order and list(shown["adapters"]) == order
        assert not _pids(leader, "order-ep", "green") & before  # rolled
    before = _pids(leader, "order-ep", "green")
    follower.svc.update_deployment("order-ep", "green", {"instance_count": 1})  # nothing changes
    follower.wait("order-ep", "green", timeout=15)
    assert _pids(leader, "order-ep", "green") == before
