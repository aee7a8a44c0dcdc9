"""Several fine-tunes on one deployment and the GGUF type, in the control plane: the spec rules, what an update
changes, the instance's command line, how the gateway routes a fine-tune's name, and rows from before."""

from __future__ import annotations

import pytest

from forgeflow.errors import InvalidInput, NotFound
from forgeflow.serving import routing, specs
from forgeflow.serving.changes import changed_deployment
from forgeflow.serving.placement import instance_command
from forgeflow.serving.records import Deployment, EndpointConfig
from forgeflow.store.states import DeploymentState

ADAPTERS = {"tuned-a:1": "/m/tuned-a/1/adapter", "tuned-b:3": "/m/tuned-b/3/adapter"}


def _dep(name: str = "blue", *, adapters: dict | None = None, runtime: str = "transformers",
         gguf_type: str | None = None, model_ref: str = "base") -> Deployment:
    return Deployment(endpoint="ep", name=name, model_ref=model_ref, model_path="/m/base", runtime=runtime,
                      instance_count=1, request_settings=specs.request_settings(None),
                      liveness_probe=specs.probe("liveness_probe", None),
                      readiness_probe=specs.probe("readiness_probe", None), state=DeploymentState.SUCCEEDED,
                      error=None, created_at="2026-01-01T00:00:00+00:00", updated_at=None,
                      adapters=dict(adapters or {}), gguf_type=gguf_type)


def _local(compute: str, resources: dict) -> dict:
    return {"name": compute, "type": "local"}


@pytest.mark.parametrize("value, runtime, expected", [
    (None, "llamacpp", "q4_k_m"), ("q8_0", "llamacpp", "q8_0"), ("f16", "llamacpp", "f16"),
    (None, "transformers", None), (None, "flow", None)])
def test_gguf_type_defaults_to_q4_k_m_on_llamacpp_only(value, runtime, expected):
    assert specs.gguf_type(value, runtime) == expected


@pytest.mark.parametrize("value, runtime", [("q8_0", "transformers"), ("q5_0", "llamacpp"), (8, "llamacpp"),
                                            ("", "llamacpp")])
def test_a_gguf_type_forgeflow_cannot_serve_is_a_400_naming_it(value, runtime):
    with pytest.raises(InvalidInput) as caught:
        specs.gguf_type(value, runtime)
    assert caught.value.field == "gguf_type"


def test_model_is_one_reference_or_a_list_of_fine_tunes():
    assert specs.model_refs(" tuned-a:1 ") == "tuned-a:1"
    assert specs.model_refs(["tuned-a:1"]) == "tuned-a:1"  # a list of one is that model, merged, as today
    assert specs.model_refs(["tuned-a:1", "tuned-b:3"]) == ["tuned-a:1", "tuned-b:3"]
    for bad in ([], ["a:1", "a:1"], ["a:1", 3], "", None, {"a": 1},
                [f"m{i}:1" for i in range(specs.MAX_ADAPTERS + 1)]):
        with pytest.raises(InvalidInput) as caught:
            specs.model_refs(bad)
        assert caught.value.field == "model", bad


def test_an_update_of_the_model_list_resolves_it_and_rolls_to_the_new_adapters():
    old = _dep(adapters=ADAPTERS)
    asked = []

    def resolve(model):
        asked.append(model)
        return "base", "/m/base", {ref: f"/m/{ref}/adapter" for ref in model}

    new = changed_deployment(old, {"model": ["tuned-a:1", "tuned-b:3", "tuned-c:2"]}, resolve, _local)
    assert asked == [["tuned-a:1", "tuned-b:3", "tuned-c:2"]]
    assert list(new.adapters) == ["tuned-a:1", "tuned-b:3", "tuned-c:2"] and new.state == DeploymentState.UPDATING
    # the same list again resolves nothing; one model instead drops the adapters
    assert changed_deployment(old, {"model": list(ADAPTERS)}, resolve, _local).adapters == ADAPTERS
    one = changed_deployment(old, {"model": "tuned-a:1"}, lambda m: ("tuned-a:1", "/m/tuned-a/1", {}), _local)
    assert (one.model_ref, one.adapters, one.models) == ("tuned-a:1", {}, ["tuned-a:1"])


def test_a_runtime_change_brings_its_gguf_default_and_gguf_type_follows_the_runtime():
    llama = changed_deployment(_dep(), {"runtime": "llamacpp"}, None, _local)
    assert llama.gguf_type == "q4_k_m"
    assert changed_deployment(llama, {"gguf_type": "q8_0"}, None, _local).gguf_type == "q8_0"
    assert changed_deployment(llama, {"runtime": "transformers"}, None, _local).gguf_type is None
    both = changed_deployment(_dep(), {"runtime": "llamacpp", "gguf_type": "f16"}, None, _local)
    assert both.gguf_type == "f16"
    with pytest.raises(InvalidInput) as caught:
        changed_deployment(_dep(), {"gguf_type": "q8_0"}, None, _local)
    assert caught.value.field == "gguf_type"
    with pytest.raises(InvalidInput) as caught:
        changed_deployment(llama, {"gguf_type": "q3"}, None, _local)
    assert caught.value.field == "gguf_type"


def test_the_instance_loads_the_base_with_one_adapter_flag_each_and_its_gguf_type():
    argv = instance_command(_dep(adapters=ADAPTERS, runtime="llamacpp", gguf_type="q8_0"), 9000)
    assert argv[argv.index("--model-dir") + 1] == "/m/base"
    assert argv[argv.index("--gguf-type") + 1] == "q8_0"
    flags = [argv[i + 1] for i, a in enumerate(argv) if a == "--adapter"]
    assert flags == ["tuned-a:1=/m/tuned-a/1/adapter", "tuned-b:3=/m/tuned-b/3/adapter"]
    plain = instance_command(_dep(), 9000)  # one model, an old row: as before
    assert "--adapter" not in plain and "--gguf-type" not in plain


def _endpoint(*deps: Deployment, traffic: dict | None = None) -> EndpointConfig:
    return EndpointConfig(name="ep", auth_mode="key", primary="p", secondary="s",
                          traffic=traffic or {deps[0].name: 100}, mirror={}, max_body_bytes=None,
                          deployments={d.name: d for d in deps})


def test_a_fine_tunes_name_routes_to_the_one_deployment_serving_it():
    cfg = _endpoint(_dep("blue", model_ref="base-model"), _dep("green", adapters=ADAPTERS),
                    _dep("red", adapters={"tuned-b:3": "/x", "tuned-c:1": "/y"}), traffic={"blue": 100})
    assert routing.choose_deployment(cfg, None, "tuned-a:1") == ("green", False)
    assert routing.choose_deployment(cfg, None, "tuned-a") == ("green", False)
    assert routing.choose_deployment(cfg, None, "tuned-c") == ("red", False)
    assert routing.choose_deployment(cfg, None, "red") == ("red", False)  # a deployment's name still wins
    # served by two deployments, a version served nowhere, a name unknown: the traffic split
    for model in ("tuned-b:3", "tuned-a:2", "gpt-4", None):
        assert routing.choose_deployment(cfg, None, model) == ("blue", True), model
    assert routing.choose_deployment(cfg, "red", "tuned-a") == ("red", False)  # the header wins over all
    with pytest.raises(NotFound):
        routing.choose_deployment(cfg, "purple", "tuned-a")


def test_rows_from_before_read_as_one_model_with_the_servers_gguf_default():
    row = _dep().row()
    del row["adapters"], row["gguf_type"]
    old = Deployment.from_row(row | {"state": "Succeeded"})
    assert (old.adapters, old.gguf_type, old.models) == ({}, None, ["base"])
    stored = Deployment.from_row(_dep(adapters=ADAPTERS, runtime="llamacpp", gguf_type="q8_0").row())
    assert stored.models == ["tuned-a:1", "tuned-b:3"] and stored.gguf_type == "q8_0"


def test_an_instance_inherits_the_servers_environment_with_its_secret_and_lifeline(monkeypatch):
    from forgeflow.processes import INSTANCE_SECRET_ENV, LIFELINE_FD_ENV
    from forgeflow.serving.placement import instance_env

    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")  # an operator's choice for oversubscribed cores reaches it
    env = instance_env("s3cret", 7)
    assert env[INSTANCE_SECRET_ENV] == "s3cret" and env[LIFELINE_FD_ENV] == "7"
    assert env["OMP_WAIT_POLICY"] == "passive" and env["TOKENIZERS_PARALLELISM"] == "false"
