"""Flow engine overhead on a trivial one-node flow.

1. `forgeflow flow test` wall time (a fresh process each time) against `pf flow test`, when a
   Prompt flow install is given with --pf (keep it in its own venv, never in forgeflow's).
2. Per-line cost of a 1,000-line batch run (`BatchRun`, results written as JSONL), and of the
   bare engine (`run_flow` called in a loop, given the folder or the already loaded Flow): what
   forgeflow adds around a node that does nothing.

    python bench/flow_overhead.py [--pf PATH/TO/promptflow-venv/bin/pf] [--repeat 5] [--lines 1000]

Prints medians; timings are informational, never assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAG = """inputs:
  text: {type: string, default: hello}
outputs:
  output: {type: string, reference: "${echo.output}"}
nodes:
- name: echo
  type: python
  source: {type: code, path: echo.py}
  inputs: {text: "${inputs.text}"}
"""
TOOL = """from promptflow.core import tool


@tool
def echo(text: str) -> str:
    return text
"""


def make_flow(root: Path) -> Path:
    flow = root / "echo-flow"
    flow.mkdir(parents=True, exist_ok=True)
    (flow / "flow.dag.yaml").write_text(DAG)
    (flow / "echo.py").write_text(TOOL)
    return flow


def wall(cmd: list[str], env: dict, repeat: int) -> tuple[float | None, str]:
    times, last = [], ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        times.append(time.perf_counter() - t0)
        last = (proc.stdout + proc.stderr)[-400:]
        if proc.returncode != 0:
            return None, last
    return statistics.median(times), last


def per_line(flow: Path, lines: int, workers: int, repeat: int) -> dict:
    from forgeflow.flows.batch import BatchRun, start_run
    from forgeflow.flows.loader import load_flow
    from forgeflow.flows.executor import run_flow

    data = flow.parent / "rows.jsonl"
    data.write_text("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(lines)))
    batch, engine, loaded = [], [], []
    parsed = load_flow(flow)
    for r in range(repeat):
        record = start_run(flow, data=data, name=f"bench-{workers}-{r}-{time.time_ns()}", workers=workers)
        t0 = time.perf_counter()
        meta = BatchRun(record, workers=workers).execute()
        batch.append((time.perf_counter() - t0) / lines)
        assert meta["completed_lines"] == lines, meta
        t0 = time.perf_counter()
        for i in range(lines):
            run_flow(flow, {"text": f"line {i}"})
        engine.append((time.perf_counter() - t0) / lines)
        t0 = time.perf_counter()
        for i in range(lines):
            run_flow(parsed, {"text": f"line {i}"})
        loaded.append((time.perf_counter() - t0) / lines)
    return {"batch_ms_per_line": round(statistics.median(batch) * 1e3, 4),
            "run_flow_dir_ms_per_call": round(statistics.median(engine) * 1e3, 4),
            "run_flow_loaded_ms_per_call": round(statistics.median(loaded) * 1e3, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pf", help="path to a `pf` executable in a separate venv (skipped when absent)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--lines", type=int, default=1000)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ff-bench-"))
    env = dict(os.environ, FORGEFLOW_HOME=str(root / "home"), FORGEFLOW_URL="http://127.0.0.1:9",
               PF_DISABLE_TRACING="true", PROMPTFLOW_DISABLE_TELEMETRY="true")
    os.environ.update(FORGEFLOW_HOME=env["FORGEFLOW_HOME"], FORGEFLOW_URL=env["FORGEFLOW_URL"])
    flow = make_flow(root)
    report: dict = {"python": sys.version.split()[0], "repeat": args.repeat}
    ff = [str(Path(sys.executable).with_name("forgeflow")), "flow", "test", "--flow", str(flow), "--inputs", "text=hi"]
    report["forgeflow_flow_test_s"], out = wall(ff, env, args.repeat)
    if report["forgeflow_flow_test_s"] is None:
        report["forgeflow_error"] = out
    pf = args.pf or shutil.which("pf")
    if pf and Path(pf).exists():
        pf_flow = make_flow(root / "pf")
        # Prompt flow writes ~/.promptflow and starts a local service: keep both inside the temp folder.
        pf_env = dict(env, HOME=str(root / "pf-home"))
        wall([pf, "flow", "test", "--flow", str(pf_flow), "--inputs", "text=hi"], pf_env, 1)  # first run: setup
        report["pf_flow_test_s"], out = wall([pf, "flow", "test", "--flow", str(pf_flow), "--inputs", "text=hi"],
                                             pf_env, args.repeat)
        subprocess.run([pf, "service", "stop"], env=pf_env, capture_output=True, timeout=120)
        if report["pf_flow_test_s"] is None:
            report["pf_error"] = out
        elif report["forgeflow_flow_test_s"]:
            report["pf_over_forgeflow"] = round(report["pf_flow_test_s"] / report["forgeflow_flow_test_s"], 2)
    else:
        report["pf_flow_test_s"] = "skipped: no pf executable (install promptflow in its own venv, pass --pf)"
    for workers in (1, 4):
        report[f"lines_{args.lines}_workers_{workers}"] = per_line(flow, args.lines, workers, max(1, args.repeat // 2))
    print(json.dumps(report, indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
