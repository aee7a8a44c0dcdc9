"""Several servers on one database: how long a killed leader's endpoint is gone, and what a follower's hop costs.

    .venv/bin/python bench/takeover.py [--rounds 3] [--requests 100] [--backends sqlite,postgres] [--json]

Everything runs for real on this machine: two `forgeflow serve` processes on one workspace (tests/live_server.py),
its database a SQLite file or a throw-away Postgres cluster (tests/pg_harness.py, Debian's postgresql), one
deployment of the tests' tiny random Llama (so the model's own time does not drown what is measured).

- takeover: the leader is SIGKILLed; the seconds until the follower says it leads, and until the endpoint answers
  through it again (its instance started anew by the new leader). The baseline, measured in the same round on the
  same servers: the seconds from `online-deployment create` to its first answer (the instance's cold start).
- follower hop: a 1-token scoring request through the follower (it forwards to the instances the leader publishes)
  against the same request through the leader, interleaved; medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]

import httpx  # noqa: E402
from live_server import LiveServer  # noqa: E402
from tiny import build_tiny_model  # noqa: E402

BODY = {"input_data": {"input_string": [{"role": "user", "content": "hi"}], "parameters": {"max_new_tokens": 1}}}


def _answers(url: str, key: str) -> bool:
    try:
        return httpx.post(f"{url}/endpoints/tk-ep/score", json=BODY, headers={"Authorization": f"Bearer {key}"},
                          timeout=30).status_code == 200
    except httpx.HTTPError:
        return False


def _until(check, timeout_s: float = 180) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError("no answer within %.0f s" % timeout_s)
        time.sleep(0.05)
    return time.monotonic() - start


def _role(url: str) -> str | None:
    try:
        return httpx.get(f"{url}/api/health", timeout=2).json()["role"]
    except httpx.HTTPError:
        return None


def one_round(model: Path, database_url: str | None, requests: int) -> dict:
    home = Path(tempfile.mkdtemp(prefix="ff-takeover-")) / "ffhome"
    os.environ["FORGEFLOW_HOME"] = str(home)
    if database_url:
        os.environ["FORGEFLOW_DATABASE_URL"] = database_url
    else:
        os.environ.pop("FORGEFLOW_DATABASE_URL", None)
    leader, follower = LiveServer.on_loopback(home), LiveServer.on_loopback(home)
    leader.start()
    follower.start()
    try:
        follower.cli("online-endpoint", "create", "--name", "tk-ep")
        key = follower.cli_json("online-endpoint", "get-credentials", "--name", "tk-ep")["primary_key"]
        started = time.monotonic()
        follower.cli("online-deployment", "create", "--name", "blue", "--endpoint-name", "tk-ep", "--model",
                     str(model), "--all-traffic")
        _until(lambda: _answers(follower.url, key))
        cold = time.monotonic() - started
        hops = {"leader": [], "follower": []}
        with httpx.Client(timeout=30) as http:
            for _ in range(requests):
                for name, server in (("leader", leader), ("follower", follower)):
                    t0 = time.perf_counter()
                    http.post(f"{server.url}/endpoints/tk-ep/score", json=BODY,
                              headers={"Authorization": f"Bearer {key}"}).raise_for_status()
                    hops[name].append((time.perf_counter() - t0) * 1000)
        leader.proc.kill()  # SIGKILL: its lock goes with the process, its instance with its lifeline
        killed = time.monotonic()
        _until(lambda: _role(follower.url) == "leader")
        leads = time.monotonic() - killed
        _until(lambda: _answers(follower.url, key))
        answers = time.monotonic() - killed
        return {"cold_start_s": cold, "leads_after_s": leads, "answers_after_s": answers,
                "leader_ms": statistics.median(hops["leader"]), "follower_ms": statistics.median(hops["follower"])}
    finally:
        follower.stop()
        leader.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100, help="scoring requests per server per round")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    model = build_tiny_model(Path(tempfile.mkdtemp(prefix="ff-tiny-")))
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    postgres = None
    if "postgres" in backends:
        from pg_harness import start_postgres

        postgres = start_postgres()
    results: dict[str, list[dict]] = {b: [] for b in backends}
    try:
        for _ in range(args.rounds):  # interleaved: each round runs every backend once
            for backend in backends:
                url = postgres.new_database() if backend == "postgres" else None
                results[backend].append(one_round(model, url, args.requests))
    finally:
        if postgres is not None:
            postgres.stop()
    summary = {}
    for backend, rounds in results.items():
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        summary[backend] = med | {"rounds": len(rounds),
                                  "answers_after_over_cold_start": med["answers_after_s"] / med["cold_start_s"],
                                  "follower_over_leader": med["follower_ms"] / med["leader_ms"]}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    for backend, s in summary.items():
        print(f"{backend} ({s['rounds']} rounds, medians): follower leads {s['leads_after_s']:.2f} s after the kill; "
              f"the endpoint answers again after {s['answers_after_s']:.2f} s = "
              f"{s['answers_after_over_cold_start']:.2f}x a cold start of its instance ({s['cold_start_s']:.2f} s); "
              f"1-token request through the follower {s['follower_ms']:.2f} ms vs the leader {s['leader_ms']:.2f} ms "
              f"= {s['follower_over_leader']:.2f}x")


if __name__ == "__main__":
    main()
