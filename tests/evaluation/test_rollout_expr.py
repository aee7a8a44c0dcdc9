"""promote_if: read with `ast` over a whitelist, never evaluated by Python; a deployment's name stands for its
value of the metric it is compared with; anything else is a 400 naming promote_if and the column."""

from __future__ import annotations

import pytest

from forgeflow.errors import InvalidInput
from forgeflow.evaluation.rollout_expr import parse_condition
from forgeflow.evaluation.rollout_window import quantile, window

DEPLOYMENTS = ["blue", "green", "blue-2"]
ISSUE = "error_rate<0.01 and p95_latency_ms<1.2*blue and judge>=blue"


def figures(green: dict, blue: dict | None = None) -> dict:
    return {"green": green, "blue": blue or {}}


def test_the_issues_condition_reads_each_deployment_name_as_the_metric_beside_it():
    cond = parse_condition(ISSUE, DEPLOYMENTS, "green")
    assert cond.metrics == {"error_rate", "p95_latency_ms", "judge"} and cond.deployments == {"blue"}
    ok, clauses = cond.evaluate(figures({"error_rate": 0.0, "p95_latency_ms": 110.0, "judge": 0.8},
                                        {"p95_latency_ms": 100.0, "judge": 0.7}), "green")
    assert ok
    assert clauses[1] == {"clause": "p95_latency_ms<1.2*blue", "passed": True,
                          "values": {"p95_latency_ms": 110.0, "blue.p95_latency_ms": 100.0}}
    assert clauses[2]["values"] == {"judge": 0.8, "blue.judge": 0.7}


def test_a_failing_clause_is_named_with_its_values():
    cond = parse_condition(ISSUE, DEPLOYMENTS, "green")
    ok, clauses = cond.evaluate(figures({"error_rate": 0.0, "p95_latency_ms": 130.0, "judge": 0.8},
                                        {"p95_latency_ms": 100.0, "judge": 0.9}), "green")
    assert not ok
    assert [c["clause"] for c in clauses if not c["passed"]] == ["p95_latency_ms<1.2*blue", "judge>=blue"]


@pytest.mark.parametrize(("text", "values", "expected"), [
    ("not error_rate > 0.5", {"error_rate": 0.1}, True),
    ("error_rate < 0.01 or requests >= 100", {"error_rate": 0.2, "requests": 150}, True),
    ("(p99_latency_ms - p50_latency_ms) / 2 <= 10", {"p99_latency_ms": 30.0, "p50_latency_ms": 12.0}, True),
    ("0 <= error_rate < 0.05", {"error_rate": 0.05}, False),
    ("p95_latency_ms < 100", {"p95_latency_ms": None}, False),  # no data: the comparison does not hold
    ("p95_latency_ms / 0 < 1", {"p95_latency_ms": 5.0}, False),
    ("error_rate == -0", {"error_rate": 0.0}, True),
])
def test_arithmetic_comparisons_and_logic(text, values, expected):
    assert parse_condition(text, DEPLOYMENTS, "green").evaluate({"green": values}, "green")[0] is expected


def test_a_name_with_a_dash_is_written_with_an_underscore():
    cond = parse_condition("p95_latency_ms <= blue_2", DEPLOYMENTS, "green")
    assert cond.deployments == {"blue-2"}
    assert cond.evaluate({"green": {"p95_latency_ms": 5.0}, "blue-2": {"p95_latency_ms": 5.0}}, "green")[0]


def test_only_error_rate_clauses_of_a_conjunction_are_checked_early():
    cond = parse_condition("error_rate<0.01 and p95_latency_ms<blue", DEPLOYMENTS, "green")
    breached = cond.early_breach({"green": {"error_rate": 0.5, "p95_latency_ms": 1e9}}, "green")
    assert breached == [{"clause": "error_rate<0.01", "passed": False, "values": {"error_rate": 0.5}}]
    assert not parse_condition("error_rate<0.01 or judge>0.5", DEPLOYMENTS, "green").early_breach(
        {"green": {"error_rate": 0.5}}, "green")


@pytest.mark.parametrize(("text", "says"), [
    ("error_rate<", "not a condition"),
    ("latency<1", "unknown name 'latency'"),
    ("error_rate<0.01 and red<1", "unknown name 'red'"),
    ("blue<1", "deployment 'blue' stands for"),
    ("p95_latency_ms<blue+judge", "deployment 'blue' stands for"),
    ("error_rate", "must be compared"),
    ("error_rate<0.01 and 3", "and/or join comparisons"),
    ("error_rate**2<1", "Pow is not allowed"),
    ("__import__('os').system('true')", "Call is not allowed"),
    ("error_rate.real<1", "Attribute is not allowed"),
    ("error_rate<'x'", "is not a number"),
    ("error_rate<True", "is not a number"),
    ("[1][0]<error_rate", "not allowed"),
    ("lambda: 1", "not allowed"),
    ("error_rate in (1, 2)", "In is not a comparison"),
    ("(error_rate<1)<2", "a comparison inside a comparison"),
    ("", "empty"),
    ("error_rate<0.01 and " * 80 + "error_rate<1", "at most"),
    ("(" * 300 + "error_rate<1" + ")" * 300, "promote_if"),
    ("error_rate<1\x00", "promote_if"),
])
def test_bad_conditions_are_400s_naming_promote_if(text, says):
    with pytest.raises(InvalidInput) as err:
        parse_condition(text, DEPLOYMENTS, "green")
    assert err.value.field == "promote_if" and err.value.status_code == 400
    assert says in err.value.message


def test_the_column_of_the_wrong_name_is_given():
    with pytest.raises(InvalidInput, match="column 21: unknown name 'nope'"):
        parse_condition("error_rate<0.01 and nope>1", DEPLOYMENTS, "green")


def test_percentiles_interpolate_within_the_bucket():
    bounds = (0.1, 0.2, 0.4)
    assert quantile(0.5, [0, 10, 0, 0], bounds) == pytest.approx(0.15)
    assert quantile(0.95, [10, 0, 10, 0], bounds) == pytest.approx(0.2 + 0.2 * 0.9)
    assert quantile(0.99, [0, 0, 0, 3], bounds) == 0.4  # past the last bucket: its bound
    assert quantile(0.5, [0, 0, 0, 0], bounds) is None


def test_a_window_adds_the_servers_and_counts_a_new_server_from_zero():
    lat = [0] * 15
    start = {"a": {"green": [10, 1, lat, lat]}, "gone": {"green": [50, 50, lat, lat]}}
    end = {"a": {"green": [20, 1, lat, lat]}, "b": {"green": [5, 5, lat, lat]}}
    got = window(start, end)["green"]
    assert (got["requests"], got["errors"], got["error_rate"]) == (15, 5, pytest.approx(1 / 3))


@pytest.mark.parametrize("text", [
    "error_rate<1.0*1" + "0" * 400,  # a numeral past the float range
    "error_rate<1e400",  # a float literal that is inf
])
def test_a_number_past_the_bound_is_a_400(text):
    with pytest.raises(InvalidInput, match="a number is at most") as err:
        parse_condition(text, DEPLOYMENTS, "green")
    assert err.value.field == "promote_if"


def test_arithmetic_past_the_float_range_is_unknown_not_an_error():
    huge = "*".join(["1000000000000"] * 26)  # each factor within the bound, the product past float's range
    for text in (f"error_rate < {huge} / 1", f"error_rate < 1.0 * ({huge})", f"error_rate < {huge} - {huge}"):
        ok, clauses = parse_condition(text, DEPLOYMENTS, "green").evaluate({"green": {"error_rate": 0.0}}, "green")
        assert not ok and clauses[0]["passed"] is False


@pytest.mark.parametrize("text", [
    "judge<" + "-" * 993 + "1",  # signs nested deeper than Python's recursion limit
    "error_rate<" + "+".join(["1"] * 300),  # too many parts
])
def test_a_condition_too_deep_or_too_big_is_a_400_not_a_crash(text):
    with pytest.raises(InvalidInput) as err:
        parse_condition(text, DEPLOYMENTS, "green")
    assert err.value.field == "promote_if" and ("nested too deeply" in err.value.message
                                                or "parts" in err.value.message)


@pytest.mark.parametrize(("text", "values", "expected"), [
    ("not p95_latency_ms > 100", {"p95_latency_ms": None}, False),  # not unknown is unknown, never a pass
    ("error_rate < 0.01 or p95_latency_ms < 100", {"error_rate": 0.5, "p95_latency_ms": None}, False),
    ("error_rate < 0.01 or p95_latency_ms < 100", {"error_rate": 0.0, "p95_latency_ms": None}, True),
    ("not (error_rate > 0.5 and p95_latency_ms > 100)", {"error_rate": 0.1, "p95_latency_ms": None}, True),
    ("not (error_rate > 0.5 or p95_latency_ms > 100)", {"error_rate": 0.1, "p95_latency_ms": None}, False),
    ("0 <= error_rate < p95_latency_ms", {"error_rate": 0.1, "p95_latency_ms": None}, False),
])
def test_unknown_stays_unknown_through_not_and_or(text, values, expected):
    assert parse_condition(text, DEPLOYMENTS, "green").evaluate({"green": values}, "green")[0] is expected


def test_an_unknown_error_rate_is_no_early_breach():
    cond = parse_condition("not error_rate > 0.5", DEPLOYMENTS, "green")
    assert cond.early_breach({"green": {"error_rate": None}}, "green") == []
    assert cond.early_breach({"green": {"error_rate": 0.9}}, "green")[0]["passed"] is False


@pytest.mark.parametrize(("text", "deployments", "says"), [
    ("1<2", DEPLOYMENTS, "names no metric"),
    ("error_rate<0.01 and 2>1", DEPLOYMENTS, "names no metric"),
    ("p95_latency_ms<requests", ["requests", "green"], "both a metric and a deployment"),
    ("p95_latency_ms<1.2*and", ["and", "green"], "keyword"),
])
def test_a_condition_saying_nothing_or_naming_a_clashing_deployment_is_a_400(text, deployments, says):
    with pytest.raises(InvalidInput) as err:
        parse_condition(text, deployments, "green")
    assert err.value.field == "promote_if" and says in err.value.message


def test_a_deployment_without_traffic_cannot_be_compared_with():
    from forgeflow.evaluation.rollout_plan import check_spec

    states = {"blue": "Succeeded", "green": "Succeeded", "red": "Succeeded"}
    with pytest.raises(InvalidInput, match="'red', which takes no traffic") as err:
        check_spec({"promote_if": "p95_latency_ms<red"}, states, {"blue": 100}, "green")
    assert err.value.field == "promote_if"
    spec, _ = check_spec({"promote_if": "p95_latency_ms<blue_2*2", "judge_sample": 3}, states | {"blue-2": "Succeeded"},
                         {"blue-2": 100}, "green")
    assert spec.compared == ["blue-2"]  # resolved once: the rollout reads the same deployments throughout
    assert spec.condition("green").deployments == {"blue-2"}


@pytest.mark.parametrize("flow", ["a" * 5000, "judge\x00flow"])
def test_a_judge_flow_path_the_file_system_refuses_is_a_400(flow):
    from forgeflow.evaluation.rollout_judge import check_judge
    from forgeflow.evaluation.rollout_plan import check_spec

    with pytest.raises(InvalidInput) as err:
        spec, _ = check_spec({"promote_if": "judge>=blue", "judge_flow": flow}, {"blue": "Succeeded",
                             "green": "Succeeded"}, {"blue": 100}, "green")
        check_judge(spec.judge_flow, None)
    assert err.value.field == "judge_flow"
