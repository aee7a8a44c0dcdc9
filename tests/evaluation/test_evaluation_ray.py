"""An evaluation job on a ray compute target (the loopback cluster): the cluster runs the evaluation program as the
Ray job's entrypoint, one worker on a worker node, its folder on the target's storage, to the same result."""

from __future__ import annotations

import json
import sys
import time

import pytest

from forgeflow.raycluster import submission_client
from forgeflow.store.states import JobStatus
from forgeflow.training.compute.ray import PYTHON_ENV, SUBMISSION_FILE
from forgeflow.training.compute.targets import ComputeTarget
from forgeflow.training.jobs import EvaluatedModel
from forgeflow.training.runner import JobRunner

pytestmark = [pytest.mark.integration, pytest.mark.ray]


def test_an_evaluation_runs_as_a_ray_job_with_one_worker(loopback_ray, tiny_model_dir, tmp_path, monkeypatch):
    from forgeflow.store.workspace import Workspace

    monkeypatch.setenv(PYTHON_ENV, sys.executable)  # the nodes run this venv, which is not on their PATH
    ws = Workspace.open()
    runner = JobRunner(ws.store, ws.paths, poll_s=0.2)
    runner.targets.create(ComputeTarget(name="cluster", type="ray", address=loopback_ray.address,
                                        storage=str(tmp_path / "shared")))
    data = tmp_path / "test.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Who founded Quillfeather?"},
                                             {"role": "assistant", "content": "Ysolde Marrowick."}]}) + "\n")
    tiny = EvaluatedModel(str(tiny_model_dir), str(tiny_model_dir))
    runner.start()
    try:
        job = runner.submit_evaluation(model=tiny, baseline=tiny, data=str(data), metrics=("loss", "f1"),
                                       max_new_tokens=4, compute="cluster")
        deadline = time.monotonic() + 240
        while not (job := runner.get(job.id)).status.terminal and time.monotonic() < deadline:
            time.sleep(0.3)
        assert job.status == JobStatus.COMPLETED, (job.error, runner.log_text(job.id)[0][-3000:])
        assert job.job_dir.parent == tmp_path / "shared" / "jobs"
        submission = json.loads((job.job_dir / SUBMISSION_FILE).read_text())["submission_id"]
        info = submission_client(loopback_ray.address).get_job_info(submission)
        assert info.status == "SUCCEEDED" and "-m forgeflow.evaluation.worker" in info.entrypoint
        assert any(node.node_id == info.driver_node_id for node in loopback_ray.workers.values())
        result = runner.evaluation_result(job.id)
        assert set(result["model"]["metrics"]) >= {"loss", "f1"} and len(result["rows"]) == 1
    finally:
        runner.stop()
