"""Batch runs: parallel lines, failed lines kept, evaluation over a base run, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import typer.main
from typer.testing import CliRunner

from forgeflow.cli.main import app
from forgeflow.errors import InvalidInput
from forgeflow.flows.runs import RunRecord, runs_root

runner = CliRunner()

ANSWER_DAG = """
inputs:
  question: {type: string}
  log: {type: string, default: ""}
outputs:
  answer: {reference: "${answer.output}"}
nodes:
- name: answer
  type: python
  source: {type: code, path: answer.py}
  inputs: {question: "${inputs.question}", log: "${inputs.log}"}
"""
ANSWER_PY = """
import time
from promptflow import tool

@tool
def answer(question: str, log: str) -> str:
    if log:
        with open(log, "a") as f:
            f.write(question + "\\n")
    if question.startswith("slow"):
        time.sleep(0.4)
    if question == "boom":
        raise ValueError("cannot answer boom")
    return "A: " + question
"""
EVAL_DAG = """
inputs:
  answer: {type: string}
  expected: {type: string}
outputs:
  correct: {reference: "${check.output}"}
nodes:
- name: check
  type: python
  source: {type: code, path: check.py}
  inputs: {answer: "${inputs.answer}", expected: "${inputs.expected}"}
"""
CHECK_PY = """
from promptflow import tool

@tool
def check(answer: str, expected: str) -> bool:
    return expected.lower() in answer.lower()
"""


def cli(*args: str, ok: bool = True):
    res = runner.invoke(app, ["flow", "run", *args])
    if ok:
        assert res.exit_code == 0, res.output
    return res


@pytest.fixture
def answer_flow(make_flow):
    return make_flow(ANSWER_DAG, {"answer.py": ANSWER_PY}, name="answer")


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_run_group_is_pinned():
    root = typer.main.get_command(app)
    assert set(root.commands["flow"].commands["run"].commands) == {"show", "show-details", "show-metrics", "resume", "list",
                                                                     "compare"}


def test_batch_keeps_every_line_and_its_error(answer_flow, tmp_path):
    data = write_rows(tmp_path / "rows.jsonl", [{"q": "one"}, {"q": "boom"}, {"q": "three"}, {"q": "four"}])
    out = json.loads(cli("--flow", str(answer_flow), "--data", str(data), "--column-mapping",
                         "question=${data.q}", "--name", "r1", "--workers", "3", "--json").stdout)
    assert out["status"] == "CompletedWithErrors"
    assert (out["total_lines"], out["completed_lines"], out["failed_lines"]) == (4, 3, 1)
    lines = json.loads(cli("show-details", "r1", "--json").stdout)
    assert [ln["line_number"] for ln in lines] == [0, 1, 2, 3]
    assert [ln["outputs"] for ln in lines if ln["status"] == "Completed"] == [
        {"answer": "A: one"}, {"answer": "A: three"}, {"answer": "A: four"}]
    failed = lines[1]
    assert failed["status"] == "Failed" and "cannot answer boom" in failed["error"]["message"]
    assert "ValueError" in failed["error"]["details"] and failed["inputs"]["question"] == "boom"
    assert (runs_root() / "r1" / "lines.jsonl").is_file()
    table = cli("show-details", "r1").stdout
    assert "Completed" in table and "Failed" in table
    assert json.loads(cli("show", "r1", "--json").stdout)["failed_lines"] == 1
    assert [r["name"] for r in json.loads(cli("list", "--json").stdout)] == ["r1"]
    assert json.loads(cli("show-metrics", "r1", "--json").stdout) == {}
    dup = cli("--flow", str(answer_flow), "--data", str(data), "--name", "r1", ok=False)
    assert dup.exit_code == 1 and "already exists" in dup.output


def test_columns_named_like_inputs_need_no_mapping_and_bad_mapping_is_named(answer_flow, tmp_path):
    data = write_rows(tmp_path / "rows.jsonl", [{"question": "hi"}])
    out = json.loads(cli("--flow", str(answer_flow), "--data", str(data), "--json").stdout)
    assert out["status"] == "Completed" and out["name"].startswith("answer_")
    bad = cli("--flow", str(answer_flow), "--data", str(data), "--column-mapping", "nope=${data.x}", ok=False)
    assert bad.exit_code == 1 and "no input 'nope'" in bad.output
    unsplit = cli("--flow", str(answer_flow), "--data", str(data), "--column-mapping", "question", ok=False)
    assert unsplit.exit_code == 1 and "--column-mapping 'question': expected NAME=VALUE" in unsplit.output
    missing = write_rows(tmp_path / "m.jsonl", [{"other": 1}])
    out = json.loads(cli("--flow", str(answer_flow), "--data", str(missing), "--column-mapping",
                         "question=${data.q}", "--json").stdout)
    [line] = json.loads(cli("show-details", out["name"], "--json").stdout)
    assert "no column 'q'" in line["error"]["message"]


def test_evaluation_reads_the_base_run_outputs(answer_flow, make_flow, tmp_path):
    data = write_rows(tmp_path / "rows.jsonl", [{"q": "Paris", "truth": "paris"}, {"q": "Rome", "truth": "oslo"},
                                                 {"q": "boom", "truth": "x"}])
    cli("--flow", str(answer_flow), "--data", str(data), "--column-mapping", "question=${data.q}", "--name", "base")
    ev = make_flow(EVAL_DAG, {"check.py": CHECK_PY}, name="eval")
    out = json.loads(cli("--flow", str(ev), "--data", str(data), "--run", "base", "--column-mapping",
                         "answer=${run.outputs.answer}", "--column-mapping", "expected=${data.truth}",
                         "--name", "ev", "--json").stdout)
    assert out["run"] == "base"
    lines = json.loads(cli("show-details", "ev", "--json").stdout)
    assert [ln["outputs"] for ln in lines[:2]] == [{"correct": True}, {"correct": False}]
    assert lines[2]["status"] == "Failed" and "base run failed" in lines[2]["error"]["message"]


def test_resume_runs_only_missing_lines(answer_flow, tmp_path):
    from forgeflow.flows.batch import start_run

    log = tmp_path / "calls.log"
    data = write_rows(tmp_path / "rows.jsonl", [{"question": f"q{i}", "log": str(log)} for i in range(6)])
    record = start_run(answer_flow, data=data, name="partial", workers=2)
    # Simulate a run killed after lines 0 and 3 finished, mid-way through writing line 4.
    with open(record.dir / "lines.jsonl", "a") as f:
        for n in (0, 3):
            f.write(json.dumps({"line_number": n, "status": "Completed", "inputs": {}, "outputs": {"answer": "old"},
                                "error": None}) + "\n")
        f.write('{"line_number": 4, "status": "Compl')
    record.update_meta(status="Running", pid=2**22 + 12345)
    cli("resume", "partial")
    assert sorted(log.read_text().split()) == ["q1", "q2", "q4", "q5"]
    lines = RunRecord.open("partial").lines()
    assert [ln["line_number"] for ln in lines] == list(range(6)) and lines[0]["outputs"] == {"answer": "old"}
    assert RunRecord.open("partial").meta()["status"] == "Completed"
    again = cli("resume", "partial", ok=False)
    assert again.exit_code == 1 and "already complete" in again.output
    with pytest.raises(InvalidInput, match="--data"):
        start_run(answer_flow, data=None)


@pytest.mark.integration
def test_a_killed_run_resumes(answer_flow, tmp_path):
    """A real `forgeflow flow run` killed half way keeps its finished lines; resume finishes it."""
    data = write_rows(tmp_path / "rows.jsonl", [{"question": f"slow{i}"} for i in range(12)])
    proc = subprocess.Popen([sys.executable, "-m", "forgeflow.cli.main", "flow", "run", "--flow", str(answer_flow),
                             "--data", str(data), "--name", "killed", "--workers", "2", "--json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    lines_file = runs_root() / "killed" / "lines.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if lines_file.exists() and len(lines_file.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    before = len(RunRecord.open("killed").lines())
    assert 3 <= before < 12
    out = json.loads(cli("resume", "killed", "--json").stdout)
    assert out["status"] == "Completed" and out["completed_lines"] == 12
