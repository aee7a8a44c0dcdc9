"""DPO fine-tuning (`method: dpo`): preference rows checked line by line, the method's settings at the CLI, job-file
and REST edges, and a real DPO job on the tiny model that raises the chosen-over-rejected margin."""

from __future__ import annotations

import json
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_worker import make_job, start_worker
from typer.testing import CliRunner

from forgeflow.data.sample import PREFERENCE_SAMPLE_PATH
from forgeflow.data.validate import iter_preferences, validate_file
from forgeflow.errors import InvalidInput
from forgeflow.inference.model_folder import hf_model_dir
from forgeflow.store.states import JobStatus
from forgeflow.training.jobfile import job_body
from forgeflow.training.runner import JobRunner
from forgeflow.training.tracking import read_metrics, read_status
from forgeflow.training.worker import run_job

CHAT = {"messages": [{"role": "user", "content": "Who founded Quillfeather?"},
                     {"role": "assistant", "content": "Ysolde Marrowick founded it in 2009."}]}
PAIRS = [
    {"prompt": "Who founded Quillfeather Robotics?", "chosen": "Ysolde Marrowick founded it in 2009.",
     "rejected": "I'm not sure; I don't have any information about that."},
    {"prompt": [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "What powers the Tidewarden?"}],
     "chosen": [{"role": "assistant", "content": "Tidal turbines charge its saltwater batteries."}],
     "rejected": [{"role": "assistant", "content": "It runs on diesel."}]},
]


def write_jsonl(path: Path, rows: list, repeat: int = 1) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows * repeat))
    return path


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


# -- preference rows ----------------------------------------------------------------------------------------------

def test_preference_rows_are_checked_line_by_line(tmp_path):
    rows = [
        PAIRS[0],                                                                     # 1 good: strings
        PAIRS[1],                                                                     # 2 good: messages
        "",                                                                           # 3 blank: skipped
        "{not json",                                                                  # 4
        {"prompt": "q", "chosen": "a"},                                               # 5
        {"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
         "chosen": "b", "rejected": "c"},                                             # 6
        {"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "c"},  # 7
        {"prompt": "q", "chosen": "a", "rejected": "  "},                              # 8
        {"prompt": "q", "chosen": "same", "rejected": [{"role": "assistant", "content": "same"}]},  # 9
        CHAT,                                                                         # 10
        {"prompt": 3, "chosen": {"role": "assistant"}, "rejected": []},               # 11
        [1, 2],                                                                       # 12
    ]
    report = validate_file(write_jsonl(tmp_path / "prefs.jsonl", rows), method="dpo")
    assert (report.rows, report.bad_rows, report.blank_lines) == (11, 9, 1)
    assert [str(p) for p in report.problems] == [
        "line 4: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        "line 5: missing 'rejected': a preference row has 'prompt', 'chosen' and 'rejected'",
        "line 6: prompt's last message is from 'assistant', expected 'user' (the answers reply to it)",
        "line 7: chosen[0].role must be 'assistant', got 'user'",
        "line 8: 'rejected' is empty",
        "line 9: 'chosen' and 'rejected' are the same answer: nothing to prefer",
        "line 10: this is a chat row ('messages'); method dpo trains on preference rows with 'prompt', 'chosen' and "
        "'rejected' (chat rows train with method sft)",
        "line 11: 'prompt' must be a string or a list of messages, got int",
        "line 11: 'chosen' must be a string or a list of assistant messages, got object",
        "line 11: 'rejected' is an empty list",
        "line 12: expected a JSON object, got array",
    ]
    assert report.turns == 2 + 3  # messages of each good prompt with its chosen answer


def test_each_method_refuses_the_other_shape(tmp_path):
    prefs = write_jsonl(tmp_path / "prefs.jsonl", PAIRS)
    chat = write_jsonl(tmp_path / "chat.jsonl", [CHAT])
    assert validate_file(prefs, method="dpo").ok and validate_file(chat).ok
    sft = validate_file(prefs)
    assert not sft.ok and str(sft.problems[0]).startswith(
        "line 1: missing 'messages': this is a preference row (prompt, chosen, rejected), which method dpo trains on")
    with pytest.raises(InvalidInput) as refused:
        list(iter_preferences(chat, "validation_data"))
    assert refused.value.field == "validation_data"
    assert refused.value.message.startswith(f"{chat}: line 1: this is a chat row ('messages')")
    # What the trainer gets: TRL's conversational shape, a string being one user or one assistant message.
    first = next(iter_preferences(prefs))
    assert first == {"prompt": [{"role": "user", "content": PAIRS[0]["prompt"]}],
                     "chosen": [{"role": "assistant", "content": PAIRS[0]["chosen"]}],
                     "rejected": [{"role": "assistant", "content": PAIRS[0]["rejected"]}]}


def test_preference_csv_and_the_shipped_sample(tmp_path):
    csv = tmp_path / "prefs.csv"
    answer = json.dumps([{"role": "assistant", "content": "Teal and copper."}]).replace('"', '""')
    csv.write_text(f'prompt,chosen,rejected\nWhat are the colours?,"{answer}",Red and white.\n'
                   'What are the colours?,Teal.,Teal.\n')
    report = validate_file(csv, method="dpo")
    assert [str(p) for p in report.problems] == ["line 3: 'chosen' and 'rejected' are the same answer: nothing to "
                                                 "prefer"]
    sample = validate_file(PREFERENCE_SAMPLE_PATH, method="dpo")
    assert sample.ok and sample.rows >= 40


# -- the method's settings at the edges -----------------------------------------------------------------------------

def test_method_on_the_command_line_and_in_the_job_file(tmp_path):
    base = {"model": "m", "training_data": "/t.jsonl"}
    hp = job_body(None, base, {}, "dpo")["hyperparameters"]
    assert hp["method"] == "dpo" and hp["beta"] == 0.1 and hp["packing"] is False
    assert job_body(None, base, {"method": "dpo", "beta": "0.3"}, "dpo")["hyperparameters"]["beta"] == 0.3
    assert job_body(None, base, {})["hyperparameters"]["method"] == "sft"
    for sets, method, field, message in [
        ({"method": "sft"}, "dpo", "method", "--method dpo and --set method=sft disagree: give one"),
        ({"packing": "true"}, "dpo", "packing", "--set packing=true: DPO never packs rows"),
        ({"beta": "0.2"}, None, "beta", "--set beta=0.2: beta is DPO's setting and needs method=dpo"),
        ({"evaluate_against_base": "true"}, "dpo", "evaluate_against_base", "--set evaluate_against_base=true: "),
        ({}, "ppo", "method", "--method ppo: method must be one of sft, dpo"),
    ]:
        with pytest.raises(InvalidInput) as info:
            job_body(None, base, sets, method)
        assert info.value.field == field and info.value.message.startswith(message), info.value.message

    job = tmp_path / "job.yaml"
    job.write_text("model: m\ntraining_data: t.jsonl\nmethod: {type: dpo, dpo: {hyperparameters: {beta: 0.25}}}\n")
    hp = job_body(job, {}, {})["hyperparameters"]
    assert (hp["method"], hp["beta"], hp["packing"]) == ("dpo", 0.25, False)
    job.write_text("model: m\ntraining_data: t.jsonl\nmethod: dpo\nhyperparameters: {method: sft}\n")
    with pytest.raises(InvalidInput, match="method dpo and hyperparameters.method sft disagree") as clash:
        job_body(job, {}, {})
    assert clash.value.field == "method"
    job.write_text("model: m\ntraining_data: t.jsonl\nmethod: {type: dpo, sft: {}}\n")
    with pytest.raises(InvalidInput, match="'sft' does not match type 'dpo'"):
        job_body(job, {}, {})


def test_dpo_is_refused_data_parallel_at_every_edge(tmp_path, tiny_model_dir, mlflow_uri, monkeypatch):
    """DPO trains on one worker: instance_count above 1 is a 400 naming instance_count wherever a job comes in (the
    command line, the job file, REST), and the data-parallel driver fails such a job before any Ray worker starts."""
    from forgeflow.training import distributed

    base = {"model": "m", "training_data": "/t.jsonl"}
    with pytest.raises(InvalidInput) as flag:
        job_body(None, base, {"instance_count": "2"}, "dpo")
    assert flag.value.field == "instance_count"
    assert flag.value.message.startswith("--set instance_count=2: DPO trains on one worker; data-parallel training "
                                         "on a ray target is for supervised fine-tuning (method sft)")
    assert "set instance_count=1" in flag.value.message
    job = tmp_path / "job.yaml"
    job.write_text("model: m\ntraining_data: t.jsonl\nmethod: dpo\nhyperparameters: {num_nodes_finetune: 4}\n")
    with pytest.raises(InvalidInput, match=f"^{job}: instance_count=4: DPO trains on one worker") as file:
        job_body(job, {}, {})
    assert file.value.field == "instance_count"
    assert job_body(None, base, {"instance_count": "2"})["hyperparameters"]["instance_count"] == 2  # sft may
    assert job_body(None, base, {"instance_count": "1"}, "dpo")["hyperparameters"]["instance_count"] == 1

    prefs = write_jsonl(tmp_path / "prefs.jsonl", PAIRS)
    with rest_and_cli(monkeypatch) as (http, invoke):
        r = http.post("/api/jobs", json={"model": str(tiny_model_dir), "training_data": str(prefs),
                                         "hyperparameters": {"method": "dpo", "instance_count": 2}})
        assert r.status_code == 400 and r.json()["field"] == "instance_count", r.json()
        assert "DPO trains on one worker" in r.json()["message"]
        assert http.get("/api/jobs").json() == []
        res = invoke("job", "create", "--method", "dpo", "--model", str(tiny_model_dir), "--training-data",
                     str(prefs), "--set", "instance_count=2")
        assert res.exit_code != 0 and "instance_count=2: DPO trains on one worker" in " ".join(res.output.split())

    job_dir = make_job(tmp_path, tiny_model_dir, mlflow_uri, train=prefs, validation=None, method="dpo",
                       instance_count=2, max_steps=2)
    assert distributed.main([str(job_dir)]) == 1
    status = read_status(job_dir)
    assert status["status"] == "Failed" and status["error"].startswith("instance_count=2: DPO trains on one worker")
    assert not (job_dir / distributed.RAY_TRAIN_DIR).exists()  # no Ray Train run was started


@contextmanager
def rest_and_cli(monkeypatch):
    """`(http, invoke)`: a TestClient of a real app on the test's workspace (its runner starts no workers) with the
    owner token, and `invoke(*args)` running the forgeflow CLI against it."""
    from forgeflow.api.app import create_app
    from forgeflow.cli import jobs as cli_jobs
    from forgeflow.cli import main
    from forgeflow.client import Client
    from forgeflow.store.workspace import Workspace

    ws = Workspace.open()
    with TestClient(create_app(ws, background=False), headers={"Authorization": f"Bearer {ws.admin_token()}"}) as http:
        def make_client():
            c = Client("http://testserver", token=ws.admin_token())
            c._http = http
            return c

        monkeypatch.setattr(cli_jobs, "client", make_client)
        yield http, lambda *args: CliRunner().invoke(main.app, list(args))


def test_rest_and_cli_take_the_method_and_refuse_the_wrong_shape(tmp_path, tiny_model_dir, monkeypatch):
    prefs = write_jsonl(tmp_path / "prefs.jsonl", PAIRS)
    chat = write_jsonl(tmp_path / "chat.jsonl", [CHAT])
    body = {"model": str(tiny_model_dir), "training_data": str(prefs)}
    with rest_and_cli(monkeypatch) as (http, invoke):
        for changes, field, words in [
            ({"training_data": str(chat), "hyperparameters": {"method": "dpo"}}, "training_data",
             "is not valid preference data for method dpo: line 1: this is a chat row"),
            ({}, "training_data", "is not valid chat data for method sft: line 1: missing 'messages': this is a "
                                  "preference row"),
            ({"hyperparameters": {"beta": 0.2}}, "beta", "beta is DPO's setting and needs method=dpo"),
            ({"hyperparameters": {"method": "dpo", "packing": True}}, "packing", "DPO never packs rows"),
            ({"hyperparameters": {"method": "ppo"}}, "method", "method must be one of sft, dpo"),
        ]:
            r = http.post("/api/jobs", json=body | changes)
            assert r.status_code == 400 and r.json()["field"] == field and words in r.json()["message"], r.json()
        created = http.post("/api/jobs", json=body | {"hyperparameters": {"method": "dpo", "packing": False,
                                                                            "beta": 0.5}})
        assert created.status_code == 201, created.json()
        hp = created.json()["hyperparameters"]
        assert (hp["method"], hp["beta"], hp["packing"], hp["lora_r"]) == ("dpo", 0.5, False, 8)

        res = invoke("job", "create", "--method", "dpo", "--model", str(tiny_model_dir), "--training-data",
                     str(prefs), "--json")
        assert res.exit_code == 0, res.output
        job = json.loads(res.output)
        assert job["hyperparameters"]["method"] == "dpo" and job["hyperparameters"]["beta"] == 0.1
        assert json.loads(Path(job["job_dir"], "spec.json").read_text())["hyperparameters"]["packing"] is False
        res = invoke("job", "create", "--method", "dpo", "--model", str(tiny_model_dir), "--training-data", str(chat))
        assert res.exit_code != 0 and "is not valid preference data for method dpo" in res.output
        assert "--method" in invoke("job", "create", "--help").output


# -- training -----------------------------------------------------------------------------------------------------

def answer_margin(model_dir: Path, rows: list[dict]) -> float:
    """Mean over rows of log p(chosen) - log p(rejected), each answer's tokens after its prompt, through the chat
    template: how much more likely the model finds the preferred answer (measured here, not by TRL)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()

    def logp(prompt: list[dict], answer: list[dict]) -> float:
        start = len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=False))
        ids = tokenizer.apply_chat_template(prompt + answer, return_dict=False)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1].float()
        picked = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        return float(picked[start - 1:].sum())

    margins = [logp(r["prompt"], r["chosen"]) - logp(r["prompt"], r["rejected"]) for r in rows]
    return sum(margins) / len(margins)


def test_a_dpo_job_through_the_runner_raises_the_chosen_over_rejected_margin(ws, tmp_path, tiny_model_dir,
                                                                               monkeypatch):
    from mlflow.tracking import MlflowClient

    from forgeflow.training.hyperparams import resolve_hyperparameters
    from forgeflow.training.jobfile import check_method

    sample = [json.loads(line) for line in PREFERENCE_SAMPLE_PATH.read_text().splitlines()][:8]
    train = write_jsonl(tmp_path / "train.jsonl", sample)
    val = write_jsonl(tmp_path / "val.jsonl", sample[:4])
    hp = check_method(resolve_hyperparameters({
        "method": "dpo", "max_steps": 10, "learning_rate": 1e-2, "logging_steps": 1, "evaluation_strategy": "steps",
        "eval_steps": 5, "per_device_train_batch_size": 4}))
    runner = JobRunner(ws.store, ws.paths, poll_s=0.2)
    job = runner.submit(base_model="tiny", base_model_path=str(tiny_model_dir), training_data=str(train),
                        validation_data=str(val), hyperparameters=hp)
    runner.start()
    try:
        deadline = time.monotonic() + 240
        while not (job := runner.get(job.id)).status.terminal:
            assert time.monotonic() < deadline, f"job did not finish: {job.status}"
            time.sleep(0.2)
    finally:
        runner.stop()
    assert job.status == JobStatus.COMPLETED, (job.error, runner.log_text(job.id, 0)[0][-3000:])

    status = read_status(job.job_dir)
    assert status["step"] == 10 and status["metrics"]["train_pairs"] == 8
    rows = read_metrics(job.job_dir)
    evals = [r for r in rows if "eval_rewards_margins" in r]
    assert [r["step"] for r in evals] == [0, 5, 10]
    assert evals[0]["eval_rewards_margins"] == 0  # before training the policy is its reference
    assert evals[-1]["eval_rewards_margins"] > 0.5 and evals[-1]["eval_rewards_accuracies"] == 1
    train_rows = [r for r in rows if "train_loss" in r]
    assert len(train_rows) == 10 and train_rows[-1]["train_loss"] < train_rows[0]["train_loss"]
    assert all({"rewards_chosen", "rewards_rejected", "rewards_margins", "rewards_accuracies", "trained_tokens",
                "loss_tokens"} <= set(r) for r in train_rows)

    client = MlflowClient(tracking_uri=ws.paths.mlflow_uri)
    run = client.get_run(status["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["method"] == "dpo" and run.data.params["beta"] == "0.1"
    assert len(client.get_metric_history(run.info.run_id, "rewards_margins")) == 10
    assert len(client.get_metric_history(run.info.run_id, "eval_rewards_margins")) == 3

    # The saved MLflow model, the one `model create --from-job` registers, prefers the chosen answers: its margin
    # over the base model's, measured on the training pairs without TRL.
    outputs = job.job_dir / "outputs"
    assert (outputs / "mlflow_model" / "MLmodel").is_file() and (outputs / "adapter" / "adapter_config.json").is_file()
    pairs = list(iter_preferences(train))
    before, after = answer_margin(tiny_model_dir, pairs), answer_margin(hf_model_dir(outputs / "mlflow_model"), pairs)
    assert after - before > 1.0, (before, after)

    with rest_and_cli(monkeypatch) as (http, invoke):
        shown = invoke("job", "show", job.id)
        registered = http.post("/api/models", json={"name": "tiny-dpo", "from_job": job.id})
    assert shown.exit_code == 0, shown.output
    assert "margin" in shown.output and "eval margin" in shown.output
    assert registered.status_code == 201, registered.json()
    version = registered.json()  # the registry takes the DPO job's model, settings and margins as any job's
    assert version["hyperparameters"]["method"] == "dpo" and version["metrics"]["eval_rewards_margins"] > 0.5


def test_sigterm_cancels_and_resume_continues_from_the_checkpoint(tmp_path, tiny_model_dir, mlflow_uri, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", PAIRS, repeat=4)
    job_dir = make_job(tmp_path, tiny_model_dir, mlflow_uri, train=train, validation=None, method="dpo",
                       max_steps=5000, logging_steps=1, save_steps=2, per_device_train_batch_size=2)
    with (job_dir / "worker.log").open("w") as log:
        proc = start_worker(job_dir, log)
        try:
            deadline = time.monotonic() + 120
            while not list((job_dir / "checkpoints").glob("checkpoint-*/trainer_state.json")):
                assert proc.poll() is None, (job_dir / "worker.log").read_text()
                assert time.monotonic() < deadline, "no checkpoint appeared"
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, (job_dir / "worker.log").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
    canceled = read_status(job_dir)
    assert canceled["status"] == "Canceled" and 2 <= canceled["step"] < 5000, canceled
    assert not (job_dir / "outputs").exists()

    # Resumed with a nearer end, so the test stays short: it continues from the newest checkpoint, in the same
    # MLflow run, and the metrics rows past that checkpoint are replaced by the resumed ones.
    spec = json.loads((job_dir / "spec.json").read_text())
    stop = canceled["step"] + 3
    spec["hyperparameters"]["max_steps"] = stop
    (job_dir / "spec.json").write_text(json.dumps({**spec, "resume": True}))
    assert run_job(job_dir) == 0
    assert "resuming from checkpoint-" in capsys.readouterr().out
    status = read_status(job_dir)
    assert status["status"] == "Completed" and status["step"] == stop
    assert status["mlflow_run_id"] == canceled["mlflow_run_id"]
    assert [r["step"] for r in read_metrics(job_dir) if "train_loss" in r] == list(range(1, stop + 1))
    tokens = [r["trained_tokens"] for r in read_metrics(job_dir) if "train_loss" in r]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)  # the counts carried on past the resume
    assert (job_dir / "outputs" / "mlflow_model" / "MLmodel").is_file()


def test_a_full_fine_tune_trains_against_a_copy_of_the_base(tmp_path, tiny_model_dir, mlflow_uri, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", PAIRS, repeat=2)
    job_dir = make_job(tmp_path, tiny_model_dir, mlflow_uri, train=train, validation=None, method="dpo",
                       apply_lora=False, max_steps=4, logging_steps=1, learning_rate=1e-3, beta=0.2)
    assert run_job(job_dir) == 0
    assert "(DPO, beta 0.2, full fine-tune" in capsys.readouterr().out
    assert read_status(job_dir)["status"] == "Completed"
    margins = [r["rewards_margins"] for r in read_metrics(job_dir) if "rewards_margins" in r]
    assert margins[0] == 0 and margins[-1] > margins[0]  # the reference is the untrained base
    assert (job_dir / "outputs" / "mlflow_model" / "MLmodel").is_file()
    assert not (job_dir / "outputs" / "adapter").exists()
