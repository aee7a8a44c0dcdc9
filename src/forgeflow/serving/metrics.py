"""Gateway metrics in the Prometheus text exposition format (version 0.0.4), per endpoint and
deployment. Written by hand: four metric kinds over a dict are less than a dependency, and the
process is single-writer (the gateway's event loop) plus a few supervisor threads, so one lock
is enough.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# The rollouts' finer buckets (kept beside the exposed histograms, published with the heartbeat, never rendered):
# log-spaced 10% apart from 1 ms to 300 s, so a percentile read from them is within about 10% of the true one and
# `p95_latency_ms<1.2*blue` is decided by the answers, not by the exposed buckets' edges (2 to 2.5 times apart).
ROLLOUT_BUCKETS = tuple(round(0.001 * 1.1 ** i, 7) for i in range(134))  # 0.001 .. ~320 s
_FINE = ("forgeflow_instance_request_duration_seconds", "forgeflow_time_to_first_token_seconds")

Labels = tuple[tuple[str, str], ...]

_HELP = {
    "forgeflow_requests_total": ("counter", "Scoring and OpenAI requests answered, by status code."),
    "forgeflow_refused_requests_total": (
        "counter", "Requests the gateway answered 503 itself because the deployment had no ready instance yet (it "
        "is starting, or being placed again after a restart or a change of leader): counted in "
        "forgeflow_requests_total too, but not as the deployment's errors."),
    "forgeflow_mirrored_requests_total": ("counter", "Mirrored copies sent, by the status the mirror answered."),
    "forgeflow_request_duration_seconds": ("histogram", "Time from request to the last byte of the answer."),
    "forgeflow_instance_request_duration_seconds": (
        "histogram", "Time from request to the last byte, for answers an instance gave (no 401, 429 or 503 of the "
        "gateway's own): the latency autoscaling's target_latency_ms compares."),
    "forgeflow_time_to_first_token_seconds": ("histogram", "Time from request to the first streamed chunk."),
    "forgeflow_generated_tokens_total": ("counter", "Completion tokens generated."),
    "forgeflow_prompt_tokens_total": ("counter", "Prompt tokens read."),
    "forgeflow_pending_requests": ("gauge", "Requests admitted and not yet answered (the 429 queue)."),
    "forgeflow_ready_instances": ("gauge", "Model-server instances passing their readiness probe."),
    "forgeflow_instance_restarts_total": ("counter", "Instances restarted after a crash or a failed liveness probe."),
}


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.sum += value
        self.count += 1


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._hists: dict[str, dict[Labels, _Histogram]] = defaultdict(dict)
        self._gauges: dict[str, Callable[[], dict[Labels, float]]] = {}
        self._fine: dict[tuple[str, Labels], _Histogram] = {}  # ROLLOUT_BUCKETS twins of the _FINE histograms

    @staticmethod
    def labels(**kw: str | int | None) -> Labels:
        return tuple((k, "" if v is None else str(v)) for k, v in kw.items())

    def inc(self, name: str, labels: Labels, value: float = 1.0) -> None:
        with self._lock:
            self._counters[name][labels] += value

    def observe(self, name: str, labels: Labels, value: float) -> None:
        buckets = TTFT_BUCKETS if "first_token" in name else LATENCY_BUCKETS
        with self._lock:
            hist = self._hists[name].get(labels)
            if hist is None:
                hist = self._hists[name][labels] = _Histogram(buckets)
            hist.observe(value)
            if name in _FINE:
                fine = self._fine.get((name, labels))
                if fine is None:
                    fine = self._fine[(name, labels)] = _Histogram(ROLLOUT_BUCKETS)
                fine.observe(value)

    def gauge(self, name: str, read: Callable[[], dict[Labels, float]]) -> None:
        """Register a gauge read at scrape time (pending requests, ready instances)."""
        self._gauges[name] = read

    def value(self, name: str, labels: Labels) -> float:
        """A counter's current value (tests and the CLI read it)."""
        with self._lock:
            return self._counters.get(name, {}).get(labels, 0.0)

    def totals(self, name: str, labels: Labels) -> tuple[float, int]:
        """A histogram's sum and count so far (the autoscaler takes the mean latency between two reads)."""
        with self._lock:
            hist = self._hists.get(name, {}).get(labels)
            return (hist.sum, hist.count) if hist else (0.0, 0)

    def outcomes(self) -> list[list]:
        """Each deployment's answers so far, as a rollout reads them: [endpoint, deployment, requests, errors,
        latency bucket counts, time-to-first-token bucket counts] (counts per bucket of ROLLOUT_BUCKETS, not
        cumulative, one more for past the last bucket; latencies of the answers an instance gave, not of the
        gateway's own fast refusals). An error is what `counts_against` says. Not counted at all: a 499 (the client
        left) and a 503 the gateway answered itself for want of a ready instance (a deployment being placed again
        after a restart or a change of leader is not failing). Published with this server's heartbeat, so the
        leader adds every server's."""
        by_key: dict[tuple[str, str], list] = {}
        width = len(ROLLOUT_BUCKETS) + 1

        def entry(labels: Labels) -> list | None:
            lab = dict(labels)
            if not lab.get("deployment"):
                return None
            key = (lab.get("endpoint", ""), lab["deployment"])
            if key not in by_key:
                by_key[key] = [key[0], key[1], 0, 0, [0] * width, [0] * width]
            return by_key[key]

        with self._lock:
            for labels, n in self._counters.get("forgeflow_requests_total", {}).items():
                row = entry(tuple(kv for kv in labels if kv[0] != "code"))
                code = int(dict(labels).get("code") or 0)
                if row is not None and code != 499:
                    row[2] += int(n)
                    row[3] += int(n) if counts_against(code) else 0
            for labels, n in self._counters.get("forgeflow_refused_requests_total", {}).items():
                row = entry(labels)
                if row is not None:  # each was a 503 counted above: take it out of both
                    row[2] = max(row[2] - int(n), 0)
                    row[3] = max(row[3] - int(n), 0)
            for (name, labels), hist in self._fine.items():
                row = entry(labels)
                if row is not None:
                    row[4 if name == _FINE[0] else 5] = list(hist.counts) + [hist.count - sum(hist.counts)]
        return list(by_key.values())

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            counters = {n: dict(v) for n, v in self._counters.items()}
            hists = {n: {lab: (h.buckets, list(h.counts), h.sum, h.count) for lab, h in v.items()}
                     for n, v in self._hists.items()}
        gauges = {n: read() for n, read in self._gauges.items()}
        for name, (kind, help_text) in _HELP.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            if kind == "counter":
                for lab, v in sorted(counters.get(name, {}).items()):
                    lines.append(f"{name}{_fmt(lab)} {_num(v)}")
            elif kind == "gauge":
                for lab, v in sorted(gauges.get(name, {}).items()):
                    lines.append(f"{name}{_fmt(lab)} {_num(v)}")
            else:
                for lab, (buckets, counts, total, count) in sorted(hists.get(name, {}).items()):
                    running = 0
                    for le, c in zip(buckets, counts):
                        running += c
                        lines.append(f"{name}_bucket{_fmt(lab + (('le', _num(le)),))} {running}")
                    lines.append(f"{name}_bucket{_fmt(lab + (('le', '+Inf'),))} {count}")
                    lines.append(f"{name}_sum{_fmt(lab)} {_num(total)}")
                    lines.append(f"{name}_count{_fmt(lab)} {count}")
        return "\n".join(lines) + "\n"


def is_error(status: int) -> bool:
    """Whether an answer is the deployment's failure rather than the client's: a 5xx, a 408 (past
    request_timeout_ms) or a 424 (the model server failed)."""
    return status >= 500 or status in (408, 424)


def counts_against(status: int) -> bool:
    """Whether an answer counts against the deployment in a rollout: its failures (`is_error`) and its 429s. A 429
    is the deployment refusing its users (its queue is full): counting it as a plain request would make an overloaded
    canary look healthy, since its refusals are fast and error-free."""
    return is_error(status) or status == 429


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(labels: Labels) -> str:
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in labels) + "}" if labels else ""


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))
