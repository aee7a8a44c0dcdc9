"""Scale-out on Ray: the same fine-tune with 1 and 2 data-parallel workers, the time from 0 nodes to a running job,
and the gateway's overhead to an instance placed on a cluster node.

    .venv/bin/python bench/scale_out.py [--steps 8] [--batch 4] [--repeat 3] [--requests 200] [--json]

Everything runs for real on this machine: a multi-node Ray cluster (tests/ray_harness.py: a head with no CPUs and
two worker nodes, each a raylet of its own), `forgeflow serve` in a temporary home attached to it as a ray compute
target, SmolLM2-135M-Instruct pulled from the embedded copy, the sample data split 80/20.

- fine-tune: `job create --compute cluster --set instance_count=1` and `=2`, same steps and per-worker batch,
  interleaved `--repeat` times; tokens/s is the job's own figure (every worker's tokens over the training wall
  time). Scaling efficiency = tokens/s(2) / (2 x tokens/s(1)). Both workers share this machine's cores, so what
  this measures here is the cost of data parallelism (gradient all-reduce over gloo, two processes on the same
  cores), not a speed-up; on separate machines the same job gets each node's cores.
- 0 to running: Ray's own autoscaler with its fake multi-node provider (tests/ray_harness.py), configured from a
  forgeflow target with min 0 / max 1 (`compute cluster-config`'s mapping): the time from `job create` with no
  worker node to the job Running on a node the autoscaler started.
- gateway overhead: a 1-token request through the gateway to a deployment whose instance is a Ray actor on a worker
  node, and to the same model deployed locally, interleaved, each against the same request sent straight to a
  model server of the bench's own (serve_throughput.direct_instance); medians. The model is the tests' tiny random
  Llama, so the model's own time does not drown the hops.
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
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]

from finetune_throughput import split_sample  # noqa: E402
from serve_throughput import Server, direct_instance, overhead  # noqa: E402

MODEL = "smollm2-135m-instruct"


def api_get(server: Server, path: str) -> dict:
    """A REST read with the workspace's admin token: polling through the CLI would start a Python process every
    half second, on the same cores the job trains on."""
    import httpx

    from forgeflow.store.workspace import Workspace

    token = getattr(server, "token", None) or Workspace.open().admin_token()
    server.token = token
    answer = httpx.get(f"{server.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    answer.raise_for_status()
    return answer.json()


def wait_job(server: Server, job_id: str, until: tuple[str, ...], timeout_s: float = 1800) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = api_get(server, f"/api/jobs/{job_id}")
        if job["status"] in until:
            return job
        if job["status"] in ("Failed", "Canceled"):
            raise SystemExit(f"job {job_id} {job['status']}: {job.get('error')}")
        time.sleep(0.5)
    raise SystemExit(f"job {job_id} did not reach {until} in {timeout_s:.0f}s")


def fine_tune(server: Server, train: Path, val: Path, workers: int, steps: int, batch: int) -> dict:
    job = server.cli("job", "create", "--model", MODEL, "--training-data", str(train), "--validation-data", str(val),
                     "--compute", "cluster", "--set", f"instance_count={workers}", "--set", f"max_steps={steps}",
                     "--set", f"per_device_train_batch_size={batch}", "--set", "evaluation_strategy=no",
                     "--set", f"logging_steps={steps}")  # one log, at the end: tokens/s over the whole run
    done = wait_job(server, job["id"], ("Completed",))
    metrics = done.get("metrics") or {}
    return {"workers": workers, "tokens_per_s": float(metrics["train_tokens_per_second"]),
            "train_loss": metrics.get("train_loss"), "trained_tokens": metrics.get("trained_tokens")}


def bench_fine_tune(server: Server, data: Path, args: argparse.Namespace, say) -> dict:
    train, val = split_sample(data)
    rounds = []
    for r in range(args.repeat):
        one = fine_tune(server, train, val, 1, args.steps, args.batch)
        two = fine_tune(server, train, val, 2, args.steps, args.batch)
        rounds.append({"one": one, "two": two, "ratio": two["tokens_per_s"] / one["tokens_per_s"]})
        say(f"round {r + 1}: 1 worker {one['tokens_per_s']:.1f} tok/s, 2 workers {two['tokens_per_s']:.1f} tok/s")
    ratio = statistics.median(x["ratio"] for x in rounds)
    return {"tokens_per_s_1": statistics.median(x["one"]["tokens_per_s"] for x in rounds),
            "tokens_per_s_2": statistics.median(x["two"]["tokens_per_s"] for x in rounds),
            "ratio": ratio, "scaling_efficiency": ratio / 2, "rounds": rounds}


def bench_overhead(server: Server, work: Path, requests: int, say) -> dict:
    """The model is the test suite's tiny random Llama (tests/tiny.py), so a 1-token answer takes milliseconds and
    what differs between the three paths is the hops, not the model."""
    from tiny import build_tiny_model

    model_dir = build_tiny_model(work / "tiny-model")
    server.cli("online-endpoint", "create", "--name", "remote")
    server.cli("online-endpoint", "create", "--name", "near")
    for endpoint, compute in (("remote", "cluster"), ("near", "local")):
        server.cli("online-deployment", "create", "--name", "blue", "--endpoint-name", endpoint, "--model", str(model_dir),
                   "--compute", compute, "--all-traffic")
    proc, direct, direct_headers = direct_instance(model_dir, "transformers")
    try:
        out = {}
        for endpoint in ("remote", "near"):
            key = server.cli("online-endpoint", "get-credentials", "--name", endpoint)["primary_key"]
            url = f"{server.url}/endpoints/{endpoint}/v1/chat/completions"
            out[endpoint] = overhead(direct, direct_headers, url,
                                     {"authorization": f"Bearer {key}"}, requests)
            say(f"gateway to a {'Ray-placed' if endpoint == 'remote' else 'local'} instance: "
                f"{out[endpoint]['gateway_p50_ms']:.2f} ms p50 vs {out[endpoint]['direct_p50_ms']:.2f} ms direct")
        return {"ray_instance": out["remote"], "local_instance": out["near"]}
    finally:
        proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4, help="per-worker batch size")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200, help="requests per overhead measurement")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: finetune, overhead, coldstart")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    def say(msg: str) -> None:
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    from ray_harness import start_loopback_ray

    work = Path(tempfile.mkdtemp(prefix="ff-bench-scale-"))
    os.environ.update(FORGEFLOW_HOME=str(work / "home"), FORGEFLOW_RAY_PYTHON=sys.executable, HF_HUB_OFFLINE="1")
    (work / "home").mkdir()
    report: dict = {"machine": {"cpus": os.cpu_count()}}
    cluster = start_loopback_ray(workers=2, cpus_per_worker=2)
    server = Server(work / "home")
    try:
        from forgeflow.registry.base_models import pull_base_model

        if "finetune" not in skip:
            pull_base_model(MODEL, progress=say)
        server.cli("compute", "create", "--name", "cluster", "--type", "ray", "--address", cluster.address)
        if "finetune" not in skip:
            report["fine_tune"] = bench_fine_tune(server, work, args, say)
        if "overhead" not in skip:
            report["gateway_overhead"] = bench_overhead(server, work, args.requests, say)
    finally:
        server.stop()
        cluster.shutdown()
    if "coldstart" not in skip:
        report["zero_to_running"] = cold_start(work, say)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))


def cold_start(work: Path, say) -> dict:
    """A target with min 0 / max 1 on Ray's autoscaler (fake multi-node provider, configured by forgeflow's
    mapping): seconds from `job create` to a worker node up, and to the job Running on it."""
    from ray_harness import start_autoscaling_ray

    from forgeflow.training.compute.cluster_config import idle_timeout_minutes, node_types
    from forgeflow.training.compute.targets import validate_target

    settings = {"name": "autoscaled", "type": "ray", "address": "auto", "size": "cpu-worker", "min_nodes": 0,
                "max_nodes": 1, "idle_time_before_scale_down": 30}
    target = validate_target(settings).model_dump()
    home = work / "home-cold"
    home.mkdir()
    cluster = start_autoscaling_ray(node_types(target), idle_timeout_minutes(30), max_workers=1, cpus_per_worker=2)
    server = Server(home)
    try:
        from forgeflow.registry.base_models import pull_base_model

        os.environ["FORGEFLOW_HOME"] = str(home)
        pull_base_model(MODEL, progress=say)
        server.cli("compute", "create", "--name", "autoscaled", "--type", "ray", "--address", cluster.address,
                   "--size", "cpu-worker", "--min-instances", "0", "--max-instances", "1",
                   "--idle-time-before-scale-down", "30")
        train, _ = split_sample(work)
        t0 = time.monotonic()
        job = server.cli("job", "create", "--model", MODEL, "--training-data", str(train), "--compute", "autoscaled",
                         "--set", "max_steps=2", "--set", "evaluation_strategy=no")
        node_up = None
        while time.monotonic() - t0 < 600:
            shown = api_get(server, "/api/compute/autoscaled")["cluster"]
            if node_up is None and any(n["role"] == "worker" and n["state"] == "ALIVE" for n in shown["nodes"]):
                node_up = time.monotonic() - t0
            status = api_get(server, f"/api/jobs/{job['id']}")["status"]
            if status in ("Running", "Completed"):
                running = time.monotonic() - t0
                break
            if status in ("Failed", "Canceled"):
                raise SystemExit(f"job {job['id']} {status}")
            time.sleep(0.5)
        else:
            raise SystemExit("the job did not start within 600 s")
        wait_job(server, job["id"], ("Completed",))
        say(f"0 nodes to a running job: {running:.1f} s (worker node up after {node_up or running:.1f} s)")
        return {"seconds": running, "node_up_s": node_up or running}
    finally:
        server.stop()
        cluster.shutdown()


def render(report: dict) -> str:
    lines = []
    ft = report.get("fine_tune")
    if ft:
        lines.append(f"fine-tune, median of {len(ft['rounds'])} interleaved rounds: 1 worker {ft['tokens_per_s_1']:.1f} "
                     f"tok/s, 2 workers {ft['tokens_per_s_2']:.1f} tok/s -> {ft['ratio']:.2f}x, scaling efficiency "
                     f"{ft['scaling_efficiency']:.0%}")
    go = report.get("gateway_overhead")
    if go:
        for name, row in (("Ray-placed", go["ray_instance"]), ("local", go["local_instance"])):
            lines.append(f"gateway to a {name} instance: {row['gateway_p50_ms']:.2f} ms p50, direct "
                         f"{row['direct_p50_ms']:.2f} ms -> overhead {row['overhead_p50_ms']:.2f} ms")
    zr = report.get("zero_to_running")
    if zr:
        lines.append(f"0 nodes to a running job: {zr['seconds']:.1f} s (node up after {zr['node_up_s']:.1f} s)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
