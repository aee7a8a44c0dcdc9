"""The metric functions on hand-made strings, the bootstrap intervals and the paired comparison."""

from __future__ import annotations

import math

import pytest

from forgeflow.evaluation.metrics import (
    bootstrap_ci, compare, exact_match, normalize_answer, rouge_l, row_change, summarize, token_f1,
)


def test_squad_normalisation_and_exact_match():
    assert normalize_answer("  The Capital,  of France! ") == "capital of france"
    assert exact_match("Paris.", "paris") == 1.0
    assert exact_match("The Eiffel tower", "eiffel   tower!") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0
    assert exact_match("", "") == 1.0


def test_token_f1_counts_shared_tokens():
    # answer: bill gates founded it (4 tokens); reference: bill gates and paul allen (5); 2 shared: P 1/2, R 2/5
    assert token_f1("Bill Gates founded it", "Bill Gates and Paul Allen") == pytest.approx(4 / 9)
    assert token_f1("paris paris", "paris") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert token_f1("London", "Paris") == 0.0
    assert token_f1("", "Paris") == 0.0 and token_f1("the", "a") == 1.0  # both empty once articles go


def test_rouge_l_is_the_lcs_f_measure():
    # LCS of "the cat sat on the mat" and "the cat lay on the mat" is 5 tokens of 6 on each side
    assert rouge_l("the cat lay on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    assert rouge_l("Paris", "Paris") == 1.0 and rouge_l("London", "Paris") == 0.0


def test_bootstrap_interval_holds_the_mean_and_is_seeded():
    values = [0.0, 1.0, 1.0, 0.5, 0.25, 0.75, 1.0, 0.0]
    lo, hi = bootstrap_ci(values, seed=3)
    assert lo <= sum(values) / len(values) <= hi and lo < hi
    assert bootstrap_ci(values, seed=3) == (lo, hi)
    assert bootstrap_ci(values, seed=4) != (lo, hi)
    assert bootstrap_ci(values, seed=3, confidence=0.5)[1] - bootstrap_ci(values, seed=3, confidence=0.5)[0] < hi - lo
    assert bootstrap_ci([], seed=0) is None and bootstrap_ci([0.3], seed=0) == (0.3, 0.3)


def test_summary_weights_the_loss_by_tokens_and_counts_unscored_rows():
    out = summarize([1.0, 3.0], name="loss", weights=[3, 1])
    assert out["loss"] == pytest.approx(1.5) and out["perplexity"] == pytest.approx(math.exp(1.5))
    assert out["perplexity_ci"] == pytest.approx([math.exp(v) for v in out["loss_ci"]])
    judged = summarize([1.0, None, 0.5], name="judge")
    assert judged["judge"] == pytest.approx(0.75) and judged["judge_failed"] == 1
    assert summarize([None], name="judge") == {"judge": None, "judge_ci": None, "judge_failed": 1}


def test_paired_comparison_counts_rows_and_knows_lower_loss_is_better():
    f1 = compare([1.0, 0.5, 0.2, None], [0.5, 0.5, 0.4, 1.0], name="f1", seed=1)
    assert (f1["better"], f1["worse"], f1["same"]) == (1, 1, 1)  # the row the model lacks does not count
    assert f1["delta"] == pytest.approx((1.7 - 1.4) / 3)
    assert f1["delta_ci"][0] <= f1["delta"] <= f1["delta_ci"][1]
    loss = compare([1.0, 2.0], [2.0, 2.0], name="loss", seed=1)
    assert (loss["better"], loss["worse"], loss["same"]) == (1, 0, 1) and loss["delta"] == pytest.approx(-0.5)
    assert compare([None], [1.0], name="f1")["delta"] is None


def test_a_row_changes_by_the_vote_of_its_metrics():
    assert row_change({"loss": 1.0, "f1": 0.5}, {"loss": 2.0, "f1": 0.5}, ["loss", "f1"]) == "better"
    assert row_change({"loss": 1.0, "f1": 0.0}, {"loss": 2.0, "f1": 0.5}, ["loss", "f1"]) == "same"
    assert row_change({"f1": 0.0, "judge": None}, {"f1": 0.5, "judge": 1.0}, ["f1", "judge"]) == "worse"


def test_rouge_l_counts_words_of_any_script():
    # rouge-score's own tokenizer keeps only [a-z0-9]: these scored 0 against themselves
    assert rouge_l("Привет мир", "Привет мир") == 1.0
    assert rouge_l("Привет, мир!", "привет мир") == 1.0  # case and punctuation as for Latin text
    assert rouge_l("Привет мир", "Пока мир") == pytest.approx(0.5)
    assert rouge_l("Jeg bor på Fyn", "jeg bor på Sjælland") == pytest.approx(0.75)
    assert rouge_l("på", "på") == 1.0 and rouge_l("på", "pa") == 0.0
