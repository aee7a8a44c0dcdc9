"""REST surface of jobs and compute targets, in-process (no workers start: the runner thread is off)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n")
    return path


async def test_job_body_unknown_field_lists_valid_ones(api, good, tiny_model_dir):
    r = await api.post("/api/jobs", json={"model": str(tiny_model_dir), "training_data": str(good), "epochs": 3})
    body = r.json()
    assert r.status_code == 400
    assert "unknown field 'epochs'" in body["message"] and "hyperparameters" in body["message"]


async def test_job_settings_are_resolved_and_saved(api, good, tiny_model_dir):
    r = await api.post("/api/jobs", json={"model": str(tiny_model_dir), "training_data": str(good),
                                          "hyperparameters": {"learning_rate": "1e-3", "max_steps": "5"}})
    job = r.json()
    assert r.status_code == 201 and job["compute"] == "local"
    assert job["hyperparameters"]["learning_rate"] == 1e-3 and job["hyperparameters"]["max_steps"] == 5
    assert job["hyperparameters"]["lora_r"] == 8  # defaults filled in
    spec = json.loads(Path(job["job_dir"], "spec.json").read_text())
    assert spec["hyperparameters"] == job["hyperparameters"] and spec["compute"] == "local"
    assert job["outputs"] == {} and job["last_checkpoint"] is None and "pid" not in job


async def test_compute_targets_over_rest(api, good, tiny_model_dir):
    listed = (await api.get("/api/compute")).json()
    assert [t["name"] for t in listed] == ["local"] and listed[0]["max_concurrent_jobs"] == 1
    r = await api.post("/api/compute", json={"name": "gpu-box", "type": "local", "max_concurrent_jobs": 2})
    assert r.status_code == 201 and r.json()["running_jobs"] == 0 and r.json()["idle_time_before_scale_down"] == 120
    r = await api.post("/api/compute", json={"name": "cluster", "type": "ray", "max_nodes": 4})
    assert r.status_code == 400 and r.json()["field"] == "address" and "needs --address" in r.json()["message"]
    r = await api.post("/api/compute", json={"name": "x1", "nodes": 4})
    assert r.status_code == 400 and "max_concurrent_jobs" in r.json()["message"]
    r = await api.post("/api/compute", json={"name": "x2", "max_concurrent_jobs": 0})
    assert r.status_code == 400 and r.json()["field"] == "max_concurrent_jobs"
    r = await api.post("/api/compute", json={"name": "x3", "min_nodes": 3, "max_nodes": 1})
    assert r.status_code == 400 and "min_nodes" in r.json()["message"]
    assert (await api.post("/api/compute", json={"name": "gpu-box"})).status_code == 409

    r = await api.post("/api/jobs", json={"model": str(tiny_model_dir), "training_data": str(good), "compute": "gpu-box"})
    assert r.status_code == 201 and r.json()["compute"] == "gpu-box"
    shown = (await api.get("/api/compute/gpu-box")).json()
    assert shown["queued_jobs"] == 1 and shown["running_jobs"] == 0
    r = await api.post("/api/jobs", json={"model": str(tiny_model_dir), "training_data": str(good), "compute": "nowhere"})
    assert r.status_code == 404 and "gpu-box" in r.json()["message"] and r.json()["field"] == "compute"

    r = await api.patch("/api/compute/gpu-box", json={"max_concurrent_jobs": 3})
    assert r.status_code == 200 and r.json()["max_concurrent_jobs"] == 3
    r = await api.patch("/api/compute/gpu-box", json={"type": "ray"})
    assert r.status_code == 400 and "updatable" in r.json()["message"]


async def test_resume_and_cancel_states(api, app, good, tiny_model_dir):
    job = (await api.post("/api/jobs", json={"model": str(tiny_model_dir), "training_data": str(good)})).json()
    r = await api.post(f"/api/jobs/{job['id']}/resume")
    assert r.status_code == 409 and "Queued" in r.json()["message"]
    assert (await api.post(f"/api/jobs/{job['id']}/cancel")).json()["status"] == "Canceled"
    r = await api.post(f"/api/jobs/{job['id']}/resume")
    assert r.status_code == 200 and r.json()["status"] == "Queued"
    spec = json.loads(Path(job["job_dir"], "spec.json").read_text())
    assert spec["resume"] is True
    app.state.ff.ws.store.update("jobs", {"id": job["id"]}, {"status": "Completed"})
    r = await api.post(f"/api/jobs/{job['id']}/resume")
    assert r.status_code == 409 and "Completed" in r.json()["message"]
    assert (await api.post("/api/jobs/ft-none/resume")).status_code == 404


async def test_metrics_offset(api, good, tiny_model_dir):
    job = (await api.post("/api/jobs", json={"model": str(tiny_model_dir), "training_data": str(good)})).json()
    Path(job["job_dir"], "metrics.jsonl").write_text("".join(
        json.dumps({"step": step, "train_loss": 1.0 / step}) + "\n" for step in (1, 2, 3)))
    assert len((await api.get(f"/api/jobs/{job['id']}/metrics")).json()) == 3
    assert [m["step"] for m in (await api.get(f"/api/jobs/{job['id']}/metrics", params={"offset": 2})).json()] == [3]


async def test_where_a_target_runs_things_changes_only_while_nothing_runs_there(api, app, good, tiny_model_dir,
                                                                               tmp_path):
    """address, size and storage are where a running job's driver and a deployment's instances live: changing
    them under those would strand them (409 naming the field); limits may change any time; null clears."""
    store = app.state.ff.ws.store
    closed = "127.0.0.1:1"  # nothing listens: the target's cluster reads as unreachable at once
    r = await api.post("/api/compute", json={"name": "far", "type": "ray", "address": closed, "size": "gpu",
                                             "storage": str(tmp_path / "nfs")})
    assert r.status_code == 201 and r.json()["cluster"]["reachable"] is False
    r = await api.patch("/api/compute/far", json={"size": "gpu nodes!"})
    assert r.status_code == 400 and r.json()["field"] == "size"
    r = await api.patch("/api/compute/far", json={"storage": str(tmp_path / "nfs") + "/"})
    assert r.status_code == 400 and r.json()["field"] == "storage"

    job = (await api.post("/api/jobs", json={"model": str(tiny_model_dir), "training_data": str(good),
                                             "compute": "far"})).json()
    store.update("jobs", {"id": job["id"]}, {"status": "Running"})
    for field, value in (("address", "127.0.0.1:2"), ("size", None), ("storage", str(tmp_path / "other"))):
        r = await api.patch("/api/compute/far", json={field: value})
        assert r.status_code == 409 and r.json()["field"] == field, r.json()
        assert "1 running job(s)" in r.json()["message"]
    r = await api.patch("/api/compute/far", json={"address": closed, "max_nodes": 3})  # same address: no move
    assert r.status_code == 200 and r.json()["max_nodes"] == 3

    store.update("jobs", {"id": job["id"]}, {"status": "Completed"})
    store.insert("deployments", {"endpoint": "chat", "name": "blue", "model_ref": "m:1", "model_path": "/m",
                                 "runtime": "transformers", "instance_count": 1, "request_settings": "{}",
                                 "state": "Succeeded", "created_at": "2026-01-01T00:00:00Z", "compute": "far"})
    r = await api.patch("/api/compute/far", json={"size": "cpu"})
    assert r.status_code == 409 and "chat/blue" in r.json()["message"]
    store.delete("deployments", {"endpoint": "chat", "name": "blue"})

    r = await api.patch("/api/compute/far", json={"size": None, "description": None})
    assert r.status_code == 200 and r.json()["size"] is None and r.json()["address"] == closed
    r = await api.patch("/api/compute/far", json={"max_concurrent_jobs": None})
    assert r.status_code == 400 and r.json()["field"] == "max_concurrent_jobs"
