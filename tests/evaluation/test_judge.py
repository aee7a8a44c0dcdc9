"""The LLM-as-judge runner on a deterministic, python-only judge flow, and the shipped judge-answer flow."""

from __future__ import annotations

import pytest

from forgeflow.errors import InvalidInput, NotFound
from forgeflow.evaluation.judge import DEFAULT_JUDGE_FLOW, judge_answers, judge_flow
from forgeflow.flows.executor import run_flow
from eval_fixtures import JUDGE_FLOW as FLOW, write_python_judge


@pytest.fixture
def python_judge(tmp_path):
    return write_python_judge(tmp_path / "judge")


def test_judge_scores_each_item_and_a_failed_or_out_of_range_row_is_none(python_judge):
    items = [
        {"question": "Capital of France?", "answer": "It is Paris.", "reference": "Paris"},
        {"question": "Capital of France?", "answer": "Lyon", "reference": "Paris"},
        {"question": "Anything?", "answer": "something", "reference": None},
        {"question": "Crash?", "answer": "boom", "reference": "x"},
        {"question": "Scale?", "answer": "way off", "reference": "x"},
    ]
    assert judge_answers(python_judge, items) == [1.0, 0.0, 0.5, None, None]
    assert judge_answers(python_judge, []) == []


def test_a_flow_that_is_no_judge_or_a_connection_it_cannot_use_is_refused(python_judge, tmp_path):
    with pytest.raises(InvalidInput) as exc:
        judge_answers(python_judge, [{"question": "q", "answer": "a", "reference": "r"}], connection="other")
    assert exc.value.field == "judge_connection"
    (python_judge / "flow.dag.yaml").write_text(FLOW.replace("score:", "verdict:"))
    with pytest.raises(InvalidInput) as exc:
        judge_flow(python_judge)
    assert exc.value.field == "judge_flow" and "no output 'score'" in exc.value.message


def test_the_shipped_judge_takes_any_connection_and_a_missing_one_fails_before_any_row():
    flow = judge_flow(DEFAULT_JUDGE_FLOW, "my-judge")
    assert flow.nodes["rate"].connection == "my-judge" and flow.nodes["to_score"].type == "python"
    assert judge_flow(DEFAULT_JUDGE_FLOW).nodes["rate"].connection == "forgeflow-judge"
    with pytest.raises(NotFound):
        judge_answers(DEFAULT_JUDGE_FLOW, [{"question": "q", "answer": "a", "reference": "r"}], connection="nobody")


@pytest.mark.parametrize("reply, score", [
    ("5", 1.0), ("1", 0.0), ("Rating: 4.", 0.75), ("I'd say 3/5", 0.5), ("no idea", None), ("10", None), ("2.5", None),
])
def test_the_shipped_judge_turns_a_1_to_5_rating_into_a_score(reply, score):
    assert run_flow(DEFAULT_JUDGE_FLOW, {"rating": reply}, node="to_score").outputs == {"to_score": score}
