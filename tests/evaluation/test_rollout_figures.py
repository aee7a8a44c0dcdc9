"""What a rollout reads of a deployment's answers (serving/metrics.py `outcomes`, evaluation/rollout_window.py): a
429 counts against it, a 499 and the gateway's own 503 for want of a ready instance not at all, latencies are those
of the answers an instance gave, and percentiles come from buckets fine enough (10% apart) that a 20% margin is
decided by the answers rather than by where the buckets' edges fall."""

from __future__ import annotations

import pytest

from forgeflow.evaluation.rollout_expr import parse_condition
from forgeflow.evaluation.rollout_window import reading, window
from forgeflow.serving.metrics import Metrics

GREEN = Metrics.labels(endpoint="shop", deployment="green")
BLUE = Metrics.labels(endpoint="shop", deployment="blue")


def answered(m: Metrics, labels, code: int, n: int, seconds: float | None = None, *, refused: bool = False) -> None:
    """n answers as the gateway records them (forwarding.Call.record)."""
    for _ in range(n):
        m.inc("forgeflow_requests_total", labels + (("code", str(code)),))
        if refused:
            m.inc("forgeflow_refused_requests_total", labels)
        m.observe("forgeflow_request_duration_seconds", labels, 0.0005 if seconds is None else seconds)
        if seconds is not None:
            m.observe("forgeflow_instance_request_duration_seconds", labels, seconds)


def figures_of(m: Metrics) -> dict:
    start = reading({"me": {"outcomes": []}}, "shop")
    return window(start, reading({"me": {"outcomes": m.outcomes()}}, "shop"))


def test_429s_count_against_the_deployment_and_499s_and_refusals_not_at_all():
    m = Metrics()
    answered(m, GREEN, 200, 8, 0.2)
    answered(m, GREEN, 429, 2)  # its queue was full: it refused users
    answered(m, GREEN, 499, 5)  # the clients left
    answered(m, GREEN, 503, 3, refused=True)  # no instance ready yet (placed again after a failover)
    answered(m, GREEN, 503, 1, 0.3)  # an instance's own 503 is the deployment's
    green = figures_of(m)["green"]
    assert (green["requests"], green["errors"]) == (11, 3)
    assert green["error_rate"] == pytest.approx(3 / 11)


def test_latency_is_read_from_the_answers_an_instance_gave():
    m = Metrics()
    answered(m, GREEN, 200, 10, 0.5)
    answered(m, GREEN, 429, 90)  # fast refusals would pull the percentiles down to a millisecond
    green = figures_of(m)["green"]
    assert green["p50_latency_ms"] == pytest.approx(500, rel=0.1)
    assert green["p95_latency_ms"] == pytest.approx(500, rel=0.1)


@pytest.mark.parametrize(("green_s", "holds"), [(0.115, True), (0.13, False)])
def test_a_20_percent_margin_is_decided_by_the_answers(green_s, holds):
    m = Metrics()
    answered(m, BLUE, 200, 50, 0.1)
    answered(m, GREEN, 200, 50, green_s)
    figures = figures_of(m)
    assert figures["green"]["p95_latency_ms"] == pytest.approx(green_s * 1000, rel=0.1)
    cond = parse_condition("p95_latency_ms<1.2*blue", ["blue", "green"], "green")
    assert cond.evaluate(figures, "green")[0] is holds


def test_the_prometheus_histograms_keep_their_buckets():
    m = Metrics()
    answered(m, GREEN, 200, 1, 0.115)
    text = m.render()
    assert 'forgeflow_instance_request_duration_seconds_bucket{endpoint="shop",deployment="green",le="0.25"} 1' in text
    assert 'le="0.1265"' not in text  # the rollouts' fine buckets are not exposed
    assert 'forgeflow_refused_requests_total' in text
