"""Autoscaling between min_instances and max_instances: the decision (pure), the scale settings and their
refusals, and the loop and the wake-up on a real gateway whose instances are fake model servers."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from gateway_harness import FAST_LIVENESS, FAST_PROBES, post, wait_until

from forgeflow.errors import InvalidInput
from forgeflow.serving import specs
from forgeflow.serving.autoscale import LATENCY, WAKE_REASON, Calm, decide

SCALE = {"type": "target_utilization", "min_instances": 1, "max_instances": 4, "polling_interval": 1.0,
         "target_utilization_percentage": 100, "idle_time_before_scale_down": 10.0, "target_latency_ms": None}


# -- the decision -------------------------------------------------------------------------------------------
def test_a_queue_past_the_target_scales_out_at_once_up_to_max_instances():
    half = SCALE | {"target_utilization_percentage": 50}
    out = decide(half, count=1, pending=3, slots=2, latency_s=None, calm=None, now=0)
    assert out.count == 3 and out.calm is None  # 3 requests, 1 per instance at 50% of 2 slots
    assert out.reason.startswith("scale out: 3 pending requests, 1 instances of 2 request slots")
    assert decide(half, count=1, pending=40, slots=2, latency_s=None, calm=None, now=0).count == 4
    assert decide(SCALE, count=2, pending=4, slots=2, latency_s=None, calm=None, now=0).count == 2  # at target


def test_scale_in_waits_for_the_idle_time_and_keeps_the_busiest_moment():
    first = decide(SCALE, count=3, pending=0, slots=1, latency_s=None, calm=None, now=100)
    assert first.count == 3 and first.calm == Calm(100, 1)
    busier = decide(SCALE, count=3, pending=2, slots=1, latency_s=None, calm=first.calm, now=105)
    assert busier.count == 3 and busier.calm == Calm(100, 2)
    done = decide(SCALE, count=3, pending=0, slots=1, latency_s=None, calm=busier.calm, now=110)
    assert done.count == 2 and done.calm is None and done.reason.startswith("scale in:")
    # load back at the count stops the clock
    assert decide(SCALE, count=3, pending=3, slots=1, latency_s=None, calm=first.calm, now=109).calm is None


def test_scale_in_stops_at_min_instances_and_zero_is_allowed_only_by_it():
    assert decide(SCALE | {"idle_time_before_scale_down": 0}, count=3, pending=0, slots=1, latency_s=None,
                  calm=None, now=0).count == 1
    to_zero = SCALE | {"min_instances": 0, "idle_time_before_scale_down": 0}
    assert decide(to_zero, count=1, pending=0, slots=1, latency_s=None, calm=None, now=0).count == 0
    woken = decide(to_zero, count=0, pending=1, slots=1, latency_s=None, calm=None, now=0)
    assert woken.count == 1 and woken.reason.startswith("scale out")
    assert decide(to_zero, count=0, pending=0, slots=1, latency_s=None, calm=None, now=0).count == 0


def test_latency_over_its_target_adds_an_instance_only_under_load():
    slow = SCALE | {"target_latency_ms": 200}
    out = decide(slow, count=1, pending=1, slots=4, latency_s=0.5, calm=None, now=0)
    assert out.count == 2 and "latency 500 ms" in out.reason
    assert decide(slow, count=1, pending=0, slots=4, latency_s=0.5, calm=None, now=0).count == 1
    assert decide(slow, count=1, pending=1, slots=4, latency_s=0.1, calm=None, now=0).count == 1
    assert decide(slow, count=1, pending=1, slots=4, latency_s=None, calm=None, now=0).count == 1
    assert decide(slow | {"max_instances": 1}, count=1, pending=1, slots=4, latency_s=0.5, calm=None,
                  now=0).count == 1


# -- the settings -------------------------------------------------------------------------------------------
def test_scale_settings_default_and_fill_in_azure_defaults():
    assert specs.scale_settings(None) == {"type": "default"}
    full = specs.scale_settings({"type": "target_utilization", "max_instances": 3})
    assert full == {"type": "target_utilization", "min_instances": 1, "max_instances": 3, "polling_interval": 1.0,
                    "target_utilization_percentage": 70, "idle_time_before_scale_down": 120.0,
                    "target_latency_ms": None}
    assert specs.scale_settings({"min_instances": 0}, full)["min_instances"] == 0  # merged onto what was set
    assert specs.scale_settings({"type": "default"}, full) == {"type": "default"}


@pytest.mark.parametrize(("given", "field"), [
    ({"type": "sometimes"}, "scale_settings.type"),
    ({"type": "target_utilization"}, "scale_settings.max_instances"),
    ({"type": "target_utilization", "max_instances": specs.MAX_INSTANCES + 1}, "scale_settings.max_instances"),
    ({"type": "target_utilization", "max_instances": 2, "min_instances": 3}, "scale_settings.min_instances"),
    ({"type": "target_utilization", "max_instances": 2, "min_instances": True}, "scale_settings.min_instances"),
    ({"type": "target_utilization", "max_instances": 2, "colour": "red"}, "scale_settings.colour"),
    ({"type": "target_utilization", "max_instances": 2, "polling_interval": 0}, "scale_settings.polling_interval"),
    ({"type": "target_utilization", "max_instances": 2, "polling_interval": math.nan},
     "scale_settings.polling_interval"),
    ({"type": "target_utilization", "max_instances": 2, "target_utilization_percentage": 101},
     "scale_settings.target_utilization_percentage"),
    ({"type": "target_utilization", "max_instances": 2, "idle_time_before_scale_down": -1},
     "scale_settings.idle_time_before_scale_down"),
    ({"type": "target_utilization", "max_instances": 2, "target_latency_ms": 0}, "scale_settings.target_latency_ms"),
    ({"max_instances": 3}, "scale_settings.max_instances"),  # type default takes no autoscaling key
    ("fast", "scale_settings"),
])
def test_bad_scale_settings_name_the_key(given, field):
    with pytest.raises(InvalidInput) as e:
        specs.scale_settings(given)
    assert e.value.field == field and field in e.value.message


def test_updates_keep_instance_count_within_min_and_max():
    spec = {"model": "m:1", "instance_count": 3, "runtime": "transformers", "request_settings": {},
            "liveness_probe": {}, "readiness_probe": {}, "scale_settings": {"type": "default"}}
    auto = specs.apply_sets(spec, {"scale_settings.type": "target_utilization", "scale_settings.min_instances": 0,
                                   "scale_settings.max_instances": 2})
    assert auto["instance_count"] == 2 and auto["scale_settings"]["max_instances"] == 2
    assert specs.apply_sets(auto, {"instance_count": 0})["instance_count"] == 0
    with pytest.raises(InvalidInput) as e:
        specs.apply_sets(auto, {"instance_count": 3})
    assert e.value.field == "instance_count" and "from 0 to 2" in e.value.message
    with pytest.raises(InvalidInput) as e:
        specs.apply_sets(auto, {"instance_count": None})
    assert e.value.field == "instance_count"
    at_zero = auto | {"instance_count": 0}
    assert specs.apply_sets(at_zero, {"scale_settings.type": "default"})["instance_count"] == 1
    with pytest.raises(InvalidInput) as e:
        specs.apply_sets(auto, {"scale_settings": 3})
    assert e.value.field == "scale_settings"


# -- on a gateway -------------------------------------------------------------------------------------------
def _autoscaled(gateway, endpoint: str, config: dict, scale: dict, *, slots: int, instance_count: int | None = None,
                timeout_ms: int = 30_000) -> dict:
    gateway.svc.create_deployment(
        endpoint, "blue", "fake:1", json.dumps(config), instance_count=instance_count,
        request_settings={"max_concurrent_requests_per_instance": slots, "request_timeout_ms": timeout_ms},
        liveness_probe=FAST_LIVENESS, readiness_probe=FAST_PROBES, scale_settings=scale)
    gateway.svc.update_endpoint(endpoint, traffic={"blue": 100})
    return gateway.wait(endpoint, "blue")


def _counts(events: list[dict]) -> list[int]:
    return [events[0]["from"]] + [e["to"] for e in events] if events else []


def test_a_queue_scales_out_and_a_quiet_spell_scales_back_in(gateway):
    key = gateway.endpoint("grow-ep")
    _autoscaled(gateway, "grow-ep", {"delay": 3}, SCALE | {"max_instances": 3, "polling_interval": 0.1,
                                                           "target_utilization_percentage": 50,
                                                           "idle_time_before_scale_down": 1}, slots=2)
    show = lambda: gateway.svc.show_deployment("grow-ep", "blue")  # noqa: E731
    with ThreadPoolExecutor(4) as pool:
        # four requests fill one instance's queue (2 x 2 slots); at 50% of 2 slots each wants 4 instances, 3 allowed
        answers = [pool.submit(post, gateway, "grow-ep", key) for _ in range(4)]
        wait_until(lambda: show()["instance_count"] == 3, what="the deployment to scale out to 3")
        assert [a.result().status_code for a in answers] == [200] * 4
    dep = wait_until(lambda: (d := show())["instance_count"] == 1 and d, what="the deployment to scale back in")
    counts = _counts(dep["scale_events"])
    assert counts[0] == 1 and 3 in counts and counts[-1] == 1  # reached 3, back to 1
    assert all(e["reason"].startswith("scale out" if e["to"] > e["from"] else "scale in")
               for e in dep["scale_events"])
    assert dep["provisioning_state"] == "Succeeded"
    wait_until(lambda: len(gateway.svc.supervisor.instances("grow-ep", "blue")) == 1, what="extra instances drained")
    assert post(gateway, "grow-ep", key).status_code == 200


def test_first_requests_at_zero_wake_one_instance_and_all_get_answers(gateway):
    key = gateway.endpoint("wake-ep")
    started: list[int] = []
    placement = gateway.svc.placement
    real_start = placement.start

    def counted(dep, indexes):
        started.extend(indexes)
        return real_start(dep, indexes)

    placement.start = counted
    dep = _autoscaled(gateway, "wake-ep", {"output": "awake", "load": 1.0},
                      SCALE | {"min_instances": 0, "max_instances": 3, "polling_interval": 0.1,
                               "idle_time_before_scale_down": 0.5}, slots=8, instance_count=0)
    assert dep["provisioning_state"] == "Succeeded" and dep["instance_count"] == 0 and dep["instances"] == []
    assert started == []
    with ThreadPoolExecutor(6) as pool:  # 6 requests: one instance's worth at 100% of 8 slots
        answers = list(pool.map(lambda _: post(gateway, "wake-ep", key), range(6)))
    assert [(r.status_code, r.json()) for r in answers] == [(200, {"output": "awake"})] * 6
    assert len(started) == 1
    dep = wait_until(lambda: (d := gateway.svc.show_deployment("wake-ep", "blue"))["instance_count"] == 0 and d,
                     what="the deployment to scale back to zero")
    assert [(e["from"], e["to"]) for e in dep["scale_events"]] == [(0, 1), (1, 0)]
    assert dep["provisioning_state"] == "Succeeded"
    wait_until(lambda: not gateway.svc.supervisor.instances("wake-ep", "blue"), what="the instance drained")
    assert post(gateway, "wake-ep", key).json() == {"output": "awake"}  # and again
    assert len(started) == 2


def test_a_wake_past_the_limit_is_429_and_one_not_ready_in_time_is_503(gateway):
    key = gateway.endpoint("slow-ep")
    _autoscaled(gateway, "slow-ep", {"load": -1}, SCALE | {"min_instances": 0, "max_instances": 1},
                slots=1, instance_count=0, timeout_ms=8000)  # long enough for the third request to come on a busy CI
    with ThreadPoolExecutor(2) as pool:  # one waking instance takes 2 x 1 requests
        waiting = [pool.submit(post, gateway, "slow-ep", key) for _ in range(2)]
        wait_until(lambda: gateway.svc.admission.pending(("slow-ep", "blue")) == 2, what="two requests waiting")
        assert post(gateway, "slow-ep", key).status_code == 429
        answers = [w.result() for w in waiting]
    assert [r.status_code for r in answers] == [503, 503]
    unready = answers[0].json()
    assert "none became ready within request_timeout_ms=8000" in unready["message"]
    assert "scale_settings.min_instances=1" in unready["message"]
    # the gateway's own answers are no instance's latency: autoscaling's target_latency_ms does not see them
    labels = (("endpoint", "slow-ep"), ("deployment", "blue"))
    assert gateway.svc.metrics.totals("forgeflow_request_duration_seconds", labels)[1] == 3
    assert gateway.svc.metrics.totals(LATENCY, labels)[1] == 0
    assert gateway.svc.show_deployment("slow-ep", "blue")["instance_count"] == 1  # still starting


def test_scale_settings_through_the_rest_api(gateway):
    gateway.endpoint("rest-ep")
    gateway.deploy("rest-ep", "blue", {"output": "B"}, instance_count=2)
    url = f"{gateway.url}/api/endpoints/rest-ep/deployments/blue"

    def patch(sets: dict) -> httpx.Response:
        return httpx.patch(url, json={"set": sets}, headers=gateway.admin, timeout=30)

    r = patch({"scale_settings.max_instances": 3})
    assert r.status_code == 400 and r.json()["field"] == "scale_settings.max_instances"
    assert "scale_settings.type=target_utilization" in r.json()["message"]
    r = patch({"scale_settings.type": "target_utilization", "scale_settings.min_instances": 0,
               "scale_settings.max_instances": 1, "scale_settings.idle_time_before_scale_down": 600})
    assert r.status_code == 200 and r.json()["instance_count"] == 1, r.text
    dep = gateway.wait("rest-ep", "blue")
    assert dep["scale_settings"]["max_instances"] == 1 and len(dep["instances"]) == 1
    r = patch({"instance_count": 2})
    assert r.status_code == 400 and r.json()["field"] == "instance_count"
    r = patch({"scale_settings.min_instances": -1})
    assert r.status_code == 400 and r.json()["field"] == "scale_settings.min_instances"
    shown = httpx.get(url, headers=gateway.admin, timeout=30).json()
    assert shown["scale_settings"] == dep["scale_settings"] and shown["scale_events"] == []


def test_an_instance_that_cannot_start_is_a_503_and_the_next_request_wakes_one_again(gateway):
    key = gateway.endpoint("broken-ep")
    placement = gateway.svc.placement
    real_start, failures = placement.start, []

    def fails_once(dep, indexes):
        if indexes and not failures:
            failures.append(dep.name)
            raise OSError("no such program")
        return real_start(dep, indexes)

    placement.start = fails_once
    _autoscaled(gateway, "broken-ep", {"output": "up"}, SCALE | {"min_instances": 0, "max_instances": 1},
                slots=1, instance_count=0)
    r = post(gateway, "broken-ep", key)
    assert r.status_code == 503 and "no instance could be started: OSError: no such program" in r.json()["message"]
    dep = gateway.svc.show_deployment("broken-ep", "blue")
    assert dep["instance_count"] == 0 and dep["instances"] == [] and dep["scale_events"] == []  # as it was
    assert gateway.svc.admission.pending(("broken-ep", "blue")) == 0
    r = post(gateway, "broken-ep", key)
    assert (r.status_code, r.json()) == (200, {"output": "up"})
    assert gateway.svc.show_deployment("broken-ep", "blue")["instance_count"] == 1


def test_mirrored_traffic_wakes_a_mirror_scaled_to_zero(gateway):
    key = gateway.endpoint("shadow-ep")
    gateway.deploy("shadow-ep", "blue", {"output": "B"})
    gateway.svc.create_deployment(
        "shadow-ep", "green", "fake:1", json.dumps({"output": "G"}), instance_count=0,
        request_settings={"max_concurrent_requests_per_instance": 64}, liveness_probe=FAST_LIVENESS,
        readiness_probe=FAST_PROBES, scale_settings=SCALE | {"min_instances": 0, "max_instances": 1,
                                                              "idle_time_before_scale_down": 600})
    gateway.wait("shadow-ep", "green")
    gateway.svc.update_endpoint("shadow-ep", traffic={"blue": 100}, mirror_traffic={"green": 50})
    mirrored = lambda: gateway.svc.metrics.value(  # noqa: E731
        "forgeflow_mirrored_requests_total", (("endpoint", "shadow-ep"), ("deployment", "green"), ("code", "200")))

    def copies_arrive() -> bool:
        assert post(gateway, "shadow-ep", key).json() == {"output": "B"}
        return mirrored() > 0

    wait_until(copies_arrive, what="mirrored copies to reach the woken deployment")
    events = gateway.svc.show_deployment("shadow-ep", "green")["scale_events"]
    assert [(e["from"], e["to"], e["reason"]) for e in events] == [(0, 1, WAKE_REASON)]


def test_a_client_that_leaves_while_a_deployment_wakes_gives_its_place_back(gateway):
    key = gateway.endpoint("gone-ep")
    _autoscaled(gateway, "gone-ep", {"load": -1}, SCALE | {"min_instances": 0, "max_instances": 1},
                slots=1, instance_count=0, timeout_ms=120_000)
    with pytest.raises(httpx.ReadTimeout):
        post(gateway, "gone-ep", key, timeout=1.0)
    # long before request_timeout_ms, the gateway notices and the deployment takes requests again
    wait_until(lambda: gateway.svc.admission.pending(("gone-ep", "blue")) == 0, timeout=30,
               what="the waiting request's place given back")
