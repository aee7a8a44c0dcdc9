"""Ray compute targets through the real CLI and server: a target attached to a live multi-node cluster, its nodes
listed live with what runs on each, an unreachable cluster said clearly (and not hanging the list), the cluster
config the CLI prints, and Ray's own autoscaler bringing a node up for work and taking it away once idle."""

from __future__ import annotations

import json
import shlex
import sys
import time
import uuid

import pytest
import waiting
import yaml
from live_server import LiveServer
from ray_harness import start_autoscaling_ray

from forgeflow import raycluster
from forgeflow.client import Client
from forgeflow.processes import free_port
from forgeflow.training.compute.cluster_config import idle_timeout_minutes, node_types
from forgeflow.training.compute.targets import validate_target

pytestmark = pytest.mark.integration
ENDED = ("SUCCEEDED", "FAILED", "STOPPED")
ROW = {"messages": [{"role": "user", "content": "Who founded Quillfeather?"},
                    {"role": "assistant", "content": "Ysolde Marrowick founded it in 2009."}]}


def wait_until(predicate, timeout: float, what: str):
    """At a pace a live cluster's dashboard can take (each poll reads its state API)."""
    return waiting.wait_until(predicate, timeout, what, interval=0.5)


def submit(address: str, code: str, **resources) -> str:
    """Run `code` as a plain Ray job (work forgeflow did not start, which `compute show` lists too)."""
    client = raycluster.submission_client(address)
    submission_id = f"ft-{uuid.uuid4().hex[:10]}"
    deadline = time.monotonic() + 90
    while True:
        try:
            return client.submit_job(entrypoint=f"{sys.executable} -c {shlex.quote(code)}", submission_id=submission_id,
                                     **resources)
        except RuntimeError as exc:  # the head's job agent is still starting
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def finish(address: str, submission_id: str, marker) -> str:
    """Let a job that `waits_for(marker)` end, stopping it if it does not; how it ended."""
    client = raycluster.submission_client(address)
    marker.write_text("")
    try:
        return wait_until(lambda: (s := client.get_job_status(submission_id).value) in ENDED and s, 60,
                          f"job {submission_id} to end")
    except AssertionError:
        client.stop_job(submission_id)
        raise


def waits_for(marker) -> str:
    """Driver code that holds on until the test writes `marker` (at most a minute)."""
    return f"import os, time\nt = time.time()\nwhile not os.path.exists({str(marker)!r}) and time.time() - t < 60:\n" \
           "    time.sleep(0.2)\n"


@pytest.mark.ray
def test_a_ray_target_lists_its_nodes_live(live_server, loopback_ray, tmp_path):
    s = live_server
    created = s.cli_json("compute", "create", "--name", "gpu-cluster", "--type", "ray", "--address",
                         loopback_ray.address, "--min-instances", "0", "--max-instances", "2",
                         "--idle-time-before-scale-down", "300")
    assert created["address"] == loopback_ray.address and (created["min_nodes"], created["max_nodes"]) == (0, 2)
    assert created["cluster"]["reachable"] and created["cluster"]["workers_alive"] >= 1

    # A node of this test's own, and work on it: a job's driver, holding a named forgeflow actor.
    loopback_ray.add_worker("show-node", num_cpus=1)
    marker = tmp_path / "done"
    code = ("import ray\nray.init()\n"
            "@ray.remote(num_cpus=0, resources={'show-node': 0.1})\n"
            "class Instance:\n    def ping(self):\n        return 1\n"
            "a = Instance.options(name='blue-0', namespace='forgeflow').remote()\nray.get(a.ping.remote())\n"
            + waits_for(marker))
    job = submit(loopback_ray.address, code, entrypoint_num_cpus=0.5, entrypoint_resources={"show-node": 0.1})
    api = Client(s.url)

    def node_of(shown):
        return next((n for n in shown["nodes"] if "show-node" in n["resources"]), None)

    try:
        def placed():
            shown = api.get("/api/compute/gpu-cluster")["cluster"]
            node = node_of(shown) or {}
            # `available` is as of the autoscaler's last report (every few seconds): wait for the job's share.
            return (job in node.get("jobs", ()) and "blue-0" in node["actors"] and node["available"]
                    and node["available"]["CPU"] <= 0.5 and shown)

        shown = wait_until(placed, 90, "the job and its actor to show on their node")
        head = [n for n in shown["nodes"] if n["role"] == "head"]
        assert len(head) == 1 and head[0]["state"] == "ALIVE" and head[0]["resources"].get("CPU", 0) == 0
        node = node_of(shown)
        assert node["state"] == "ALIVE" and node["role"] == "worker" and node["ip"] and node["started_at"]
        assert node["resources"]["CPU"] == 1 and node["resources"]["show-node"] == 1
        assert node["other_actors"] == 0
        assert shown["pending"] == [] and shown["reachable"]

        human = s.cli("compute", "show", "gpu-cluster").stdout
        assert "nodes" in human and "head" in human and "worker" in human and "ALIVE" in human
        assert f"job {job}" in human and "blue-0" in human
        listed = {t["name"]: t for t in s.cli_json("compute", "list")}
        assert listed["gpu-cluster"]["cluster"]["cpus"] >= 1 and listed["local"]["cluster"] is None
        assert "workers)" in s.cli("compute", "list").stdout
    finally:
        finish(loopback_ray.address, job, marker)
        loopback_ray.remove_worker("show-node")

    # A node that goes away is listed as ended, with nothing on it.
    shown = wait_until(lambda: (c := api.get("/api/compute/gpu-cluster")["cluster"]) and node_of(c)["state"] == "DEAD"
                       and c, 60, "the removed node to show as ended")
    assert node_of(shown)["ended_at"] and node_of(shown)["jobs"] == [] and node_of(shown)["available"] is None
    assert "DEAD" in s.cli("compute", "show", "gpu-cluster").stdout


def test_an_unreachable_cluster_is_said_clearly_and_does_not_hang_the_list(live_server):
    s = live_server
    # The dashboard form fails at once; the GCS form would wait for the GCS (Ray tries for a long while).
    for name, address in (("dash-gone", f"http://127.0.0.1:{free_port()}"), ("gcs-gone", f"127.0.0.1:{free_port()}")):
        res = s.cli("compute", "create", "--name", name, "--type", "ray", "--address", address)
        assert res.returncode == 0 and f"created compute {name}" in res.stdout
        assert "warning:" in res.stderr and "the target is saved" in res.stderr
    shown = s.cli("compute", "show", "dash-gone").stdout
    assert "cluster unreachable: cannot reach the Ray cluster at http://127.0.0.1:" in shown
    assert "ray status --address" in shown.replace("\n", " ")
    listed = {t["name"]: t for t in s.cli_json("compute", "list", timeout=60)}  # a dead cluster must not hang it
    assert listed["gcs-gone"]["cluster"] == {"reachable": False, "error": listed["gcs-gone"]["cluster"]["error"]}
    assert "did not answer within" in listed["gcs-gone"]["cluster"]["error"] or "cannot reach" in \
        listed["gcs-gone"]["cluster"]["error"]
    assert "unreachable" in s.cli("compute", "list").stdout

    bad = s.cli("compute", "create", "--name", "typo", "--type", "ray", "--address", "head", check=False)
    assert bad.returncode == 1 and "not a Ray address" in bad.stderr
    missing = s.cli("compute", "create", "--name", "bare", "--type", "ray", check=False)
    assert missing.returncode == 1 and "needs --address" in missing.stderr


def test_cluster_config_prints_yaml_ray_up_reads(live_server):
    s = live_server
    s.cli("compute", "create", "--name", "gpu-cluster", "--type", "ray", "--address", f"http://127.0.0.1:{free_port()}",
          "--size", "gpu-worker", "--min-instances", "0", "--max-instances", "4",
          "--idle-time-before-scale-down", "120", "--storage", "/mnt/forgeflow")
    text = s.cli("compute", "cluster-config", "gpu-cluster", "--provider", "aws").stdout
    config = yaml.safe_load(text)
    worker = config["available_node_types"]["gpu-worker"]
    assert (worker["min_workers"], worker["max_workers"], config["idle_timeout_minutes"]) == (0, 4, 2)
    assert "ray up FILE" in text and "# Fill in every <FILL IN: ...> value first:" in text
    answer = s.cli_json("compute", "cluster-config", "gpu-cluster", "--provider", "kuberay")
    assert answer["config"]["spec"]["workerGroupSpecs"][0]["maxReplicas"] == 4
    assert all(f"#   {p}" in s.cli("compute", "cluster-config", "gpu-cluster", "--provider", "kuberay").stdout
               for p in answer["placeholders"])
    bad = s.cli("compute", "cluster-config", "local", "--provider", "aws", check=False)
    assert bad.returncode == 1 and "ray targets" in bad.stderr


@pytest.mark.ray
def test_the_autoscaler_brings_a_node_up_for_a_job_and_takes_it_away_when_idle(forgeflow_home, tmp_path, monkeypatch,
                                                                              tiny_model_dir):
    """A forgeflow fine-tuning job on a target with min 0 / max 1 / 5 s idle, on Ray's own autoscaler configured by
    forgeflow's mapping: the job waits for the node the autoscaler starts (of the target's size, which the job
    selects), runs there, and the node goes once idle; `compute show` reports each step."""
    monkeypatch.setenv("FORGEFLOW_RAY_PYTHON", sys.executable)  # the nodes run this venv, not on their PATH
    settings = {"name": "autoscaled", "type": "ray", "address": "auto", "size": "cpu_worker", "min_nodes": 0,
                "max_nodes": 1, "idle_time_before_scale_down": 5}
    target = validate_target(settings).model_dump()
    cluster = start_autoscaling_ray(node_types(target), idle_timeout_minutes(5), max_workers=1)
    s = LiveServer.on_loopback(forgeflow_home)
    s.start()
    try:
        created = s.cli_json("compute", "create", "--name", "autoscaled", "--type", "ray", "--address",
                             cluster.address, "--size", "cpu_worker", "--min-instances", "0", "--max-instances", "1",
                             "--idle-time-before-scale-down", "5")
        assert created["cluster"]["reachable"] and created["cluster"]["workers_alive"] == 0
        shown = s.cli_json("compute", "show", "autoscaled")["cluster"]
        assert [n["role"] for n in shown["nodes"] if n["state"] == "ALIVE"] == ["head"]

        data = tmp_path / "train.jsonl"
        data.write_text((json.dumps(ROW) + "\n") * 8)
        job = s.cli_json("job", "create", "--model", str(tiny_model_dir), "--training-data", str(data),
                         "--compute", "autoscaled", "--set", "max_steps=3", "--set", "max_seq_length=64",
                         "--set", "evaluation_strategy=no", "--set", "per_device_train_batch_size=2")
        api = Client(s.url)
        seen_pending = []

        def worker_up():
            shown = api.get("/api/compute/autoscaled")["cluster"]
            seen_pending.extend(shown["pending"])
            # The node type comes with the autoscaler's next report, a moment after the node is up.
            up = [n for n in shown["nodes"] if n["role"] == "worker" and n["state"] == "ALIVE"
                  and any(j.startswith(job["id"]) for j in n["jobs"]) and n["node_type"] == "cpu_worker"]
            return up and shown

        shown = wait_until(worker_up, 90, "the autoscaler to bring up a worker node for the job")
        [worker] = [n for n in shown["nodes"] if n["role"] == "worker" and n["state"] == "ALIVE"]
        assert worker["resources"]["CPU"] == 1
        # The dashboard camel-cases the names of node types being launched; the target's size spells them back.
        assert all(p["node_type"] == "cpu_worker" for p in seen_pending)
        human = s.cli("compute", "show", "autoscaled").stdout
        assert "cpu_worker" in human and job["id"] in human

        done = wait_until(lambda: (j := api.get(f"/api/jobs/{job['id']}"))["status"] in ("Completed", "Failed") and j,
                          180, "the job to end")
        assert done["status"] == "Completed", done.get("error")

        def worker_gone():
            shown = api.get("/api/compute/autoscaled")["cluster"]
            gone = [n for n in shown["nodes"] if n["node_id"] == worker["node_id"] and n["state"] == "DEAD"]
            return gone and shown["workers_alive"] == 0 and shown

        shown = wait_until(worker_gone, 90, "the idle worker node to be taken away")
        [dead] = [n for n in shown["nodes"] if n["node_id"] == worker["node_id"]]
        assert dead["ended_at"] and dead["jobs"] == []
        listed = {t["name"]: t for t in s.cli_json("compute", "list")}
        assert listed["autoscaled"]["cluster"]["workers_alive"] == 0
        assert "DEAD" in s.cli("compute", "show", "autoscaled").stdout
    finally:
        s.stop()
        cluster.shutdown()
    assert cluster.processes() == []
