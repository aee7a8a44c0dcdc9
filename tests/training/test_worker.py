from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import forgeflow
from forgeflow.errors import InvalidInput, NotFound
from forgeflow.registry.mlflow_format import hf_model_dir
from forgeflow.training.tracking import read_metrics, read_status
from forgeflow.training.worker import assistant_only_loss_supported, check_chat_jsonl, run_job

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
    assert {"train_loss", "eval_loss", "train_runtime", "trained_tokens"} <= set(status["metrics"])

    rows = read_metrics(job_dir)
    train_losses = [r["train_loss"] for r in rows if "train_loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    assert len(train_losses) == 10 and [r["step"] for r in evals] == [5, 10]
    assert train_losses[-1] < train_losses[0] - 0.3, train_losses
    assert all({"step", "epoch", "timestamp"} <= set(r) for r in rows)
    assert all("learning_rate" in r for r in rows if "train_loss" in r)

    model_dir = job_dir / "outputs" / "mlflow_model"
    assert (model_dir / "MLmodel").is_file()
    assert (job_dir / "outputs" / "adapter" / "adapter_config.json").is_file()
    assert not (job_dir / "outputs" / ".merged").exists()
    hf_dir = hf_model_dir(model_dir)
    assert hf_dir == model_dir / "artifacts" / "model"

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


def test_assistant_only_loss_needs_generation_markers(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert not assistant_only_loss_supported(tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}"
        "{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
    )
    assert assistant_only_loss_supported(tokenizer)


def test_sigterm_cancels_at_the_next_step(tmp_path, tiny_model_dir, mlflow_uri):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS, repeat=4)
    job_dir = make_job(
        tmp_path, tiny_model_dir, mlflow_uri, train=train, validation=None, max_steps=5000, logging_steps=1
    )
    src = str(Path(forgeflow.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    log = (job_dir / "worker.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "forgeflow.training.worker", str(job_dir)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
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
