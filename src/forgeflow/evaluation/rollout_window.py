"""A rollout step's live figures: what the endpoint's deployments answered between two readings of every live
server's published counters (serving/metrics.py `outcomes`, on each `servers` row with its heartbeat).

A reading is per server, so a window is the sum over the servers alive now of (now - at the window's start); a
server that started within the window counts from zero, and a server that died within it takes its requests with
it. Latency percentiles come from the rollouts' own histogram buckets (serving/metrics.py ROLLOUT_BUCKETS, 10% apart
from 1 ms to 320 s), interpolated linearly within the bucket the rank falls in (Prometheus's histogram_quantile), so
a percentile is within about 10% of the true one; past the last bucket the figure is that bucket's bound. A server
that publishes buckets of another layout (an older version, during an upgrade) is read without its latencies.
"""

from __future__ import annotations

from typing import Any

from forgeflow.serving.metrics import ROLLOUT_BUCKETS

# server id -> deployment -> [requests, errors, latency bucket counts, ttft bucket counts]
Reading = dict[str, dict[str, list]]


def reading(loads: dict[str, dict[str, Any]], endpoint: str) -> Reading:
    """The endpoint's counters as each live server published them."""
    out: Reading = {}
    for server, load in loads.items():
        mine = {}
        for row in load.get("outcomes") or ():
            if isinstance(row, list) and len(row) == 6 and row[0] == endpoint:
                mine[str(row[1])] = [int(row[2]), int(row[3]), _layout(row[4]), _layout(row[5])]
        out[server] = mine
    return out


def window(start: Reading, end: Reading) -> dict[str, dict[str, float | None]]:
    """Each deployment's figures between two readings: requests, errors, error_rate and the percentiles (ms)."""
    totals: dict[str, list] = {}
    for server, deployments in end.items():
        before = start.get(server, {})
        for name, (requests, errors, lat, ttft) in deployments.items():
            b = before.get(name) or [0, 0, [0] * len(lat), [0] * len(ttft)]
            acc = totals.setdefault(name, [0, 0, [0] * len(lat), [0] * len(ttft)])
            acc[0] += max(requests - b[0], 0)  # a counter never goes down: less means another process
            acc[1] += max(errors - b[1], 0)
            acc[2] = [a + max(x - y, 0) for a, x, y in zip(acc[2], lat, _padded(b[2], len(lat)))]
            acc[3] = [a + max(x - y, 0) for a, x, y in zip(acc[3], ttft, _padded(b[3], len(ttft)))]
    return {name: figures(*acc) for name, acc in totals.items()}


def figures(requests: int, errors: int, lat: list[int], ttft: list[int]) -> dict[str, float | None]:
    return {"requests": requests, "errors": errors,
            "error_rate": errors / requests if requests else None,
            "p50_latency_ms": _ms(quantile(0.50, lat, ROLLOUT_BUCKETS)),
            "p95_latency_ms": _ms(quantile(0.95, lat, ROLLOUT_BUCKETS)),
            "p99_latency_ms": _ms(quantile(0.99, lat, ROLLOUT_BUCKETS)),
            "ttft_p95_ms": _ms(quantile(0.95, ttft, ROLLOUT_BUCKETS))}


def quantile(q: float, counts: list[int], bounds: tuple[float, ...]) -> float | None:
    """The q-quantile of observations counted per bucket (bounds: the buckets' upper edges, one more count for past
    the last), interpolated within its bucket; None without observations."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            if i >= len(bounds):
                return bounds[-1]
            low = bounds[i - 1] if i else 0.0
            return low + (bounds[i] - low) * (rank - seen) / count
        seen += count
    return bounds[-1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _layout(counts: list) -> list[int]:
    """Bucket counts of ROLLOUT_BUCKETS' layout; those of another layout read as none."""
    return [int(c) for c in counts] if isinstance(counts, list) and len(counts) == len(ROLLOUT_BUCKETS) + 1 else [0] * (len(ROLLOUT_BUCKETS) + 1)


def _padded(values: list[int], n: int) -> list[int]:
    return (list(values) + [0] * n)[:n]
