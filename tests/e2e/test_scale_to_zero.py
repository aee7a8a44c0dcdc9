"""A real server with an autoscaled deployment of the tiny model: idle, it scales to zero instances and reads
as settled; the next request starts an instance, waits for it and gets its answer."""

from __future__ import annotations


import httpx
import pytest
from instance_procs import instance_pids
from waiting import wait_until

pytestmark = pytest.mark.integration

BODY = {"input_data": {"input_string": [{"role": "user", "content": "hi"}], "parameters": {"max_new_tokens": 4}}}



def _until(predicate, timeout=90.0, what="condition"):
    return wait_until(predicate, timeout, what, interval=0.2)


def test_an_idle_deployment_scales_to_zero_and_the_next_request_wakes_it(live_server, tiny_model_dir):
    s = live_server
    s.cli("online-endpoint", "create", "--name", "zero-ep")
    dep = s.cli_json("online-deployment", "create", "--name", "blue", "--endpoint-name", "zero-ep",
                     "--model", str(tiny_model_dir), "--all-traffic",
                     "--set", "scale_settings.type=target_utilization", "--set", "scale_settings.min_instances=0",
                     "--set", "scale_settings.max_instances=2", "--set", "scale_settings.polling_interval=0.2",
                     "--set", "scale_settings.idle_time_before_scale_down=2")
    assert dep["provisioning_state"] == "Succeeded" and dep["instance_count"] == 1, dep

    def show() -> dict:
        return s.cli_json("online-deployment", "show", "--name", "blue", "--endpoint-name", "zero-ep")

    dep = _until(lambda: (d := show())["instance_count"] == 0 and d, what="the idle deployment to scale to zero")
    assert dep["provisioning_state"] == "Succeeded" and dep["instances"] == [] and dep["error"] is None
    assert "0/0 (scaled to zero)" in s.cli("online-deployment", "list", "--endpoint-name", "zero-ep").stdout
    _until(lambda: not instance_pids(s.home), 30, "the drained instance to exit")

    key = s.cli_json("online-endpoint", "get-credentials", "--name", "zero-ep")["primary_key"]
    r = httpx.post(f"{s.url}/endpoints/zero-ep/score", json=BODY, headers={"Authorization": f"Bearer {key}"},
                   timeout=120)
    assert r.status_code == 200 and isinstance(r.json()["output"], str), r.text
    events = show()["scale_events"]
    assert [(e["from"], e["to"]) for e in events[:2]] == [(1, 0), (0, 1)], events
    assert events[0]["reason"].startswith("scale in")  # the wake-up is the gateway's or the poll's, whichever is first
