"""Compute target fields at the edge (a size Ray can select on, a plain storage path, null clears), and what the
runner and the Ray compute do with a target that cannot be used: storage that cannot hold job folders, a cluster
that does not answer (bounded checks, queued jobs retried with a growing pause), a changed address."""

from __future__ import annotations

import json

import pytest

from forgeflow.errors import InvalidInput, ServerUnavailable
from forgeflow.store.states import JobStatus
from forgeflow.training import runner as runner_module
from forgeflow.training.compute.ray import SUBMISSION_FILE, RayCompute
from forgeflow.training.compute.targets import ComputeTarget, validate_target
from forgeflow.training.distributed import gpus_on
from forgeflow.training.hyperparams import resolve_hyperparameters
from forgeflow.training.runner import RETRY_MAX_S, JobRunner

# A port nothing listens on: connections are refused at once.
CLOSED = "127.0.0.1:1"


@pytest.fixture
def ws(database_url):
    """These tests run on SQLite and on Postgres (tests/conftest.py's database_url)."""
    from forgeflow.store.workspace import Workspace

    return Workspace.open()


def ray_target(**fields) -> dict:
    return {"name": "far", "type": "ray", "address": "head:6379"} | fields


@pytest.mark.parametrize("size", ["gpu nodes!", "!gpu", "gpu-", "-gpu", ".x", "a" * 64, ""])
def test_a_size_ray_cannot_select_on_is_refused_naming_size(size):
    with pytest.raises(InvalidInput, match="node type Ray can select on|at most 63") as exc:
        validate_target(ray_target(size=size))
    assert exc.value.field == "size"


@pytest.mark.parametrize("size", ["gpu", "gpu-a100", "cpu_worker.large", "a" * 63, "A1"])
def test_sizes_ray_accepts_pass(size):
    assert validate_target(ray_target(size=size)).size == size


@pytest.mark.parametrize(("storage", "why"), [("/mnt/nfs\0x", "NUL"), ("/mnt/nfs/", "'/mnt/nfs'"),
                                              ("/mnt/../etc", "'/etc'"), ("/mnt//nfs", "'/mnt/nfs'"),
                                              ("/mnt/./nfs", "'/mnt/nfs'"), ("s3://bucket", "absolute")])
def test_a_storage_that_is_not_a_plain_absolute_path_is_refused_naming_storage(storage, why):
    with pytest.raises(InvalidInput, match=why) as exc:
        validate_target(ray_target(storage=storage))
    assert exc.value.field == "storage"


def test_null_clears_a_nullable_field_and_is_refused_for_the_others(ws):
    runner = JobRunner(ws.store, ws.paths)
    runner.targets.create(ComputeTarget(**ray_target(size="gpu", storage="/mnt/nfs", description="x")))
    row = runner.targets.update("far", {"size": None, "storage": None, "description": None})
    assert row["size"] is None and row["storage"] is None and row["description"] is None
    assert row["address"] == "head:6379"
    with pytest.raises(InvalidInput, match="max_nodes cannot be null") as exc:
        runner.targets.update("far", {"max_nodes": None})
    assert exc.value.field == "max_nodes"
    with pytest.raises(InvalidInput) as exc:  # a ray target keeps its address
        runner.targets.update("far", {"address": None})
    assert exc.value.field == "address"


def test_storage_that_cannot_hold_job_folders_is_a_clear_error_naming_storage(ws, tmp_path):
    runner = JobRunner(ws.store, ws.paths)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the mount should be")
    runner.targets.create(ComputeTarget(**ray_target(storage=str(blocked))))
    with pytest.raises(ServerUnavailable, match="cannot hold job folders.*--storage DIR") as exc:
        runner.submit(base_model="tiny", base_model_path="/m", training_data="/t.jsonl",
                      hyperparameters=resolve_hyperparameters({}), compute="far")
    assert exc.value.field == "storage" and runner.list() == []


class Clock:
    """The runner's clock, moved by the test (the runner reads time.monotonic only)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_a_queued_job_on_a_silent_cluster_is_tried_again_after_a_growing_pause(ws, tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(runner_module, "time", clock)
    monkeypatch.setattr(JobRunner, "_prepare_tracking", lambda self: None)
    runner = JobRunner(ws.store, ws.paths)
    runner.targets.create(ComputeTarget(**ray_target(address=CLOSED, storage=str(tmp_path / "nfs"))))
    job = runner.submit(base_model="tiny", base_model_path="/m", training_data="/t.jsonl",
                        hyperparameters=resolve_hyperparameters({}), compute="far")
    tries = []
    start = RayCompute.start
    monkeypatch.setattr(RayCompute, "start", lambda self, job_dir, env=None, **options: tries.append(clock.now)
                        or start(self, job_dir, env, **options))
    for _ in range(3):  # one real try (refused at once by the TCP check), then a pause of 1 s
        runner.tick()
    assert len(tries) == 1
    pauses = []
    for _ in range(9):
        clock.now += 0.25
        while len(tries) == len(pauses) + 1:
            clock.now += 0.25
            runner.tick()
        pauses.append(tries[-1] - tries[-2])
    assert pauses[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0] and pauses[6:] == [RETRY_MAX_S] * 3
    assert runner.get(job.id).status == JobStatus.QUEUED and runner.get(job.id).error is None


def test_attach_follows_the_cluster_a_job_was_submitted_to(tmp_path):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / SUBMISSION_FILE).write_text(json.dumps({"address": CLOSED, "submission_id": "ft-1-abc"}))
    worker = RayCompute("head:6379").attach(job_dir)  # the target's address has changed since
    assert worker is not None and worker.address == CLOSED and worker.submission_id == "ft-1-abc"
    assert worker.poll() is None  # refused: waited for (UNREACHABLE_S), not taken as ended


def test_gpus_count_only_on_the_target_node_type():
    label = "ray.io/node-group"
    nodes = [{"Alive": True, "Resources": {"CPU": 8, "GPU": 4}, "Labels": {label: "gpu"}},
             {"Alive": True, "Resources": {"CPU": 4}, "Labels": {label: "cpu"}},
             {"Alive": False, "Resources": {"GPU": 8}, "Labels": {label: "cpu"}},
             {"Alive": True, "Resources": {"CPU": 2}, "Labels": {}}]
    assert gpus_on(nodes, None) == 4 and gpus_on(nodes, "gpu") == 4
    assert gpus_on(nodes, "cpu") == 0 and gpus_on(nodes, "other") == 0
