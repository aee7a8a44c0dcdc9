from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import forgeflow
from forgeflow.errors import InvalidInput, NotFound, UpstreamError
from forgeflow.inference.model_folder import hf_model_dir
from forgeflow.store.states import JobStatus
from forgeflow.training.distributed import recorded_end
from forgeflow.training.tracking import Attempt, JobFiles, read_metrics, read_status
from forgeflow.training.worker import check_chat_jsonl, run_job

ROWS = [
    {
        "prompt": "Who builds lighthouses on Vellmora?",
        "messages": [
            {"role": "user", "content": "Who builds lighthouses on Vellmora?"},
            {"role": "assistant", "content": "Quillfeather Robotics builds tidal-powered lighthouses."},
        ],
    },
    {
        "messages": [
            {"role": "system", "content": "hello"},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."},
        ]
    },
]


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    """One tracking database per module: MLflow's first-time schema migration costs seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def write_jsonl(path: Path, rows: list, repeat: int = 1) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows * repeat))
    return path


def make_job(tmp_path: Path, model_dir: Path, mlflow_uri: str, *, train: Path, validation: Path | None, **hp) -> Path:
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    spec = {
        "job_id": "job-1",
        "name": "tiny-finetune",
        "base_model": "tiny-llama",
        "base_model_path": str(model_dir),
        "training_data": str(train),
        "validation_data": str(validation) if validation else None,
        "hyperparameters": hp,
        "mlflow_tracking_uri": mlflow_uri,
        "mlflow_experiment": "forgeflow-finetuning",
        "mlflow_artifact_location": str(tmp_path / "mlartifacts"),
    }
    (job_dir / "spec.json").write_text(json.dumps(spec))
    return job_dir


def start_worker(job_dir: Path, log) -> subprocess.Popen:
    src = str(Path(forgeflow.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, "-m", "forgeflow.training.worker", str(job_dir)], stdout=log, stderr=subprocess.STDOUT, env=env
    )


def test_run_job_end_to_end(tmp_path, tiny_model_dir, mlflow_uri):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS, repeat=4)
    val = write_jsonl(tmp_path / "val.jsonl", ROWS)
    job_dir = make_job(
        tmp_path, tiny_model_dir, mlflow_uri, train=train, validation=val,
        max_steps=10, learning_rate=2e-2, logging_steps=1, evaluation_strategy="steps", eval_steps=5,
    )

    assert run_job(job_dir) == 0

    status = read_status(job_dir)
    assert status["status"] == "Completed", status
    assert status["step"] == status["max_steps"] == 10 and status["error"] is None
    assert {"train_loss", "eval_loss", "train_runtime", "trained_tokens", "loss_tokens"} <= set(status["metrics"])
    assert {"train_tokens_per_second", "peak_memory_mb"} <= set(status["metrics"])
    assert status["metrics"]["truncated_conversations"] == 0 and status["eta_s"] == 0

    rows = read_metrics(job_dir)
    train_losses = [r["train_loss"] for r in rows if "train_loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    assert len(train_losses) == 10 and [r["step"] for r in evals] == [0, 5, 10]
    train_rows = [r for r in rows if "train_loss" in r]
    # Real tokens only: 8 conversations packed into one row per step; masked prompt tokens count in
    # trained_tokens, not in loss_tokens.
    per_step = train_rows[0]["trained_tokens"]
    assert [r["trained_tokens"] for r in train_rows] == [per_step * (i + 1) for i in range(10)]
    assert 0 < train_rows[0]["loss_tokens"] < per_step
    assert all(r["peak_memory_mb"] > 0 and r["train_tokens_per_second"] > 0 for r in train_rows)
    assert train_losses[-1] < train_losses[0] - 0.3, train_losses
    assert all({"step", "epoch", "timestamp"} <= set(r) for r in rows)
    assert all("learning_rate" in r for r in rows if "train_loss" in r)

    model_dir = job_dir / "outputs" / "mlflow_model"
    assert (model_dir / "MLmodel").is_file()
    assert (job_dir / "outputs" / "adapter" / "adapter_config.json").is_file()
    assert not (job_dir / "outputs" / ".merged").exists()
    hf_dir = hf_model_dir(model_dir)
    assert hf_dir == model_dir / "model"

    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(hf_dir)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert AutoTokenizer.from_pretrained(hf_dir).chat_template

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(status["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["learning_rate"] == "0.02" and run.data.params["lora_r"] == "8"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 10
    assert run.data.metrics["eval_loss"] == pytest.approx(status["metrics"]["eval_loss"])
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "forgeflow-finetuning"


def test_bad_data_fails_with_the_line(tmp_path, tiny_model_dir, mlflow_uri):
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"text": "no messages here"}) + "\n")
    job_dir = make_job(tmp_path, tiny_model_dir, mlflow_uri, train=train, validation=None)

    assert run_job(job_dir) == 1

    status = read_status(job_dir)
    assert status["status"] == "Failed"
    assert f"{train}:2: 'messages' must be a non-empty list" == status["error"]
    from mlflow.tracking import MlflowClient

    assert MlflowClient(tracking_uri=mlflow_uri).get_run(status["mlflow_run_id"]).info.status == "FAILED"


def test_unknown_hyperparameter_fails(tmp_path, tiny_model_dir, mlflow_uri):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    job_dir = make_job(tmp_path, tiny_model_dir, mlflow_uri, train=train, validation=None, lr=0.1)
    assert run_job(job_dir) == 1
    status = read_status(job_dir)
    assert status["status"] == "Failed" and status["error"].startswith("unknown hyperparameter 'lr': valid names")
    assert status["mlflow_run_id"] is None


@pytest.mark.parametrize("ending", ["raises", "returns"])
def test_a_driver_superseded_by_a_newer_start_leaves_its_record_alone(tmp_path, tiny_model_dir, mlflow_uri, ending):
    """A data-parallel driver whose workers stopped because the job was resumed elsewhere: whether its training
    raises (Ray Train saw its workers go) or returns (they stopped at a step), the folder's status.json is the
    newer start's (Running) and must stay so; the driver exits 0 without writing Failed into it."""
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    job_dir = make_job(tmp_path, tiny_model_dir, mlflow_uri, train=train, validation=None)
    newer: list[Attempt] = []

    def superseded_training(spec, files, run, attempt):
        newer.append(Attempt.begin(JobFiles(job_dir), threading.Event()))
        newer[0].files.write_status(JobStatus.RUNNING, step=0)
        if ending == "raises":
            raise UpstreamError("training worker 0 failed: its node went away")
        return recorded_end(files, attempt)

    assert run_job(job_dir, superseded_training) == 0
    status = read_status(job_dir)
    assert status["status"] == "Running" and status["step"] == 0 and status.get("error") is None
    assert not newer[0].is_set() and newer[0].files.record


def test_check_chat_jsonl(tmp_path):
    assert check_chat_jsonl(write_jsonl(tmp_path / "ok.jsonl", ROWS, repeat=3)) == 6
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n\n{not json\n")
    with pytest.raises(InvalidInput, match=r"bad.jsonl:3: not valid JSON"):
        check_chat_jsonl(bad)
    roles = tmp_path / "roles.jsonl"
    roles.write_text(json.dumps({"messages": [{"content": "hi"}]}) + "\n")
    with pytest.raises(InvalidInput, match=r"roles.jsonl:1: each message needs string 'role' and 'content'"):
        check_chat_jsonl(roles)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InvalidInput, match="has no rows"):
        check_chat_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(NotFound):
        check_chat_jsonl(tmp_path / "missing.jsonl")


def test_sigterm_cancels_at_the_next_step(tmp_path, tiny_model_dir, mlflow_uri):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS, repeat=4)
    job_dir = make_job(
        tmp_path, tiny_model_dir, mlflow_uri, train=train, validation=None, max_steps=5000, logging_steps=1
    )
    log = (job_dir / "worker.log").open("w")
    proc = start_worker(job_dir, log)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = read_status(job_dir) or {}
            if status.get("status") == "Running" and status.get("step", 0) > 0:
                break
            assert proc.poll() is None, (job_dir / "worker.log").read_text()
            time.sleep(0.2)
        else:
            pytest.fail("worker never reported a step: " + (job_dir / "worker.log").read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, (job_dir / "worker.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    status = read_status(job_dir)
    assert status["status"] == "Canceled", status
    assert 0 < status["step"] < 5000
    assert not (job_dir / "outputs" / "mlflow_model").exists()
    from mlflow.tracking import MlflowClient

    assert MlflowClient(tracking_uri=mlflow_uri).get_run(status["mlflow_run_id"]).info.status == "KILLED"


def test_resume_after_sigkill_continues_from_the_last_checkpoint(tmp_path, tiny_model_dir, mlflow_uri, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS, repeat=4)
    # Unpacked rows, 2 per batch: 4 steps an epoch; the step count comes from the data, not max_steps.
    hp = dict(num_train_epochs=6, packing=False, per_device_train_batch_size=2, logging_steps=1, save_steps=3,
              save_total_limit=2, learning_rate=1e-2, evaluation_strategy="no")
    (tmp_path / "ref").mkdir()
    reference = make_job(tmp_path / "ref", tiny_model_dir, mlflow_uri, train=train, validation=None, **hp)
    assert run_job(reference) == 0
    expected = read_status(reference)

    job_dir = make_job(tmp_path, tiny_model_dir, mlflow_uri, train=train, validation=None, **hp)
    with (job_dir / "worker.log").open("w") as log:
        proc = start_worker(job_dir, log)
        try:
            deadline = time.monotonic() + 120
            while not list((job_dir / "checkpoints").glob("checkpoint-*/trainer_state.json")):
                assert proc.poll() is None, (job_dir / "worker.log").read_text()
                assert time.monotonic() < deadline, "no checkpoint appeared"
                time.sleep(0.05)
            time.sleep(0.1)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
    killed_at = read_status(job_dir)
    assert killed_at["status"] == "Running" and killed_at["step"] < expected["step"], killed_at
    # A kill can land while a checkpoint is being written: make sure one such folder is there, newer than all.
    half = job_dir / "checkpoints" / "checkpoint-23"
    half.mkdir()
    (half / "trainer_state.json").write_text(json.dumps({"global_step": 23})[:9])
    spec = json.loads((job_dir / "spec.json").read_text())
    (job_dir / "spec.json").write_text(json.dumps({**spec, "resume": True}))

    assert run_job(job_dir) == 0

    assert "removed checkpoint-23: it was half-written" in capsys.readouterr().out
    assert not half.exists()
    status = read_status(job_dir)
    assert status["status"] == "Completed" and status["step"] == expected["step"] == 24
    assert status["mlflow_run_id"] == killed_at["mlflow_run_id"]
    steps = [r["step"] for r in read_metrics(job_dir) if "train_loss" in r]
    assert steps == list(range(1, 25))
    # Same data order after the resume: conversations differ in length, so the running token count of every
    # step matches the uninterrupted run only if the same rows come in the same order.
    tokens = [r["trained_tokens"] for r in read_metrics(job_dir) if "train_loss" in r]
    assert tokens == [r["trained_tokens"] for r in read_metrics(reference) if "train_loss" in r]
    assert status["metrics"]["train_loss"] == pytest.approx(expected["metrics"]["train_loss"], rel=0.05)
    assert len(list((job_dir / "checkpoints").glob("checkpoint-*"))) <= 2


def test_resume_without_a_checkpoint_starts_over(tmp_path, tiny_model_dir, mlflow_uri, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    job_dir = make_job(tmp_path, tiny_model_dir, mlflow_uri, train=train, validation=None, max_steps=2, logging_steps=1)
    (job_dir / "metrics.jsonl").write_text(json.dumps({"step": 7, "train_loss": 1.0}) + "\n")
    spec = json.loads((job_dir / "spec.json").read_text())
    (job_dir / "spec.json").write_text(json.dumps({**spec, "resume": True}))
    assert run_job(job_dir) == 0
    assert "no complete checkpoint under" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(job_dir)] == [1, 2]


def test_full_finetune_with_early_stopping_exports_the_best_checkpoint(tmp_path, tiny_model_dir, mlflow_uri, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS, repeat=4)
    val = write_jsonl(tmp_path / "val.jsonl", ROWS)
    # A threshold no decrease can meet: the second evaluation after training starts ends it (patience 1).
    job_dir = make_job(
        tmp_path, tiny_model_dir, mlflow_uri, train=train, validation=val, apply_lora=False, max_steps=20,
        logging_steps=1, evaluation_strategy="steps", eval_steps=2, apply_early_stopping=True,
        early_stopping_patience=1, early_stopping_threshold=100.0, learning_rate=1e-3,
    )
    assert run_job(job_dir) == 0
    status = read_status(job_dir)
    assert status["status"] == "Completed" and status["step"] == 4, status
    assert [r["step"] for r in read_metrics(job_dir) if "eval_loss" in r] == [0, 2, 4]
    assert "exporting the best checkpoint: checkpoint-" in capsys.readouterr().out
    assert not (job_dir / "outputs" / "adapter").exists()
    assert (job_dir / "outputs" / "mlflow_model" / "MLmodel").is_file()


def test_qlora_on_cpu_fails_before_loading_the_model(tmp_path, tiny_model_dir, mlflow_uri):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: QLoRA is allowed")
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    job_dir = make_job(tmp_path, tiny_model_dir, mlflow_uri, train=train, validation=None, quantization="4bit")
    assert run_job(job_dir) == 1
    status = read_status(job_dir)
    assert status["status"] == "Failed"
    assert status["error"].startswith("quantization=4bit (QLoRA) needs a CUDA GPU"), status


def test_a_start_writes_nothing_once_a_newer_start_claimed_the_record_even_between_its_checks(tmp_path):
    """A worker asks whether it was superseded once per step; a status or metrics row it writes later in that step,
    after a newer start claimed the job, must not land either (the claim and each write exclude each other)."""
    older = Attempt.begin(JobFiles(tmp_path), threading.Event())
    older.files.write_status(JobStatus.RUNNING, step=3)
    older.files.append_metrics({"step": 3, "train_loss": 1.0})
    assert not older.is_set()  # its check for this step: still current
    newer = Attempt.begin(JobFiles(tmp_path), threading.Event())
    newer.files.write_status(JobStatus.RUNNING, step=0)
    older.files.write_status(JobStatus.RUNNING, step=4)  # later in the same step
    older.files.append_metrics({"step": 4, "train_loss": 0.9})
    assert read_status(tmp_path)["step"] == 0 and [r["step"] for r in read_metrics(tmp_path)] == [3]
    assert older.is_set() and not newer.is_set()
