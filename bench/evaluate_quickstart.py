"""Does the quick start's fine-tune beat its base model on held-out rows? The quick start's own job (the sample data
split 80/20, SmolLM2-135M-Instruct, its LoRA settings) in a home of its own, then `forgeflow model evaluate` of the
registered fine-tune against the base model on the quick start's test split, as a user would run them.

    .venv/bin/python bench/evaluate_quickstart.py [--home DIR] [--max-new-tokens 64] [--json]

A quality figure, not a speed: one run (the answers are greedy, so a second run gives the same figures). The home is
kept (`--home`, default ~/.cache/forgeflow-bench/quickstart-eval): a later run reuses the completed quick start and
evaluates again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from llamacpp_tools import CACHE

ROOT = Path(__file__).resolve().parents[1]


def forgeflow(env: dict, *args: str, timeout: float = 7200) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "forgeflow.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise SystemExit(f"forgeflow {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=CACHE / "quickstart-eval")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--json", action="store_true", help="print the evaluation's summary as JSON")
    args = ap.parse_args()
    args.home.mkdir(parents=True, exist_ok=True)
    from forgeflow.processes import free_port

    env = dict(os.environ, FORGEFLOW_HOME=str(args.home), FORGEFLOW_URL=f"http://127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    try:
        quick = _last_json(forgeflow(env, "quickstart", "--json").stdout)  # its steps print before the summary
        took_quickstart = time.monotonic() - t0
        data = args.home / "quickstart" / "data" / "test_data.jsonl"
        t1 = time.monotonic()
        result = _last_json(forgeflow(env, "model", "evaluate", "--model", quick["model"], "--baseline",
                                      "smollm2-135m-instruct", "--data", str(data), "--max-new-tokens",
                                      str(args.max_new_tokens), "--json").stdout)
        took_eval = time.monotonic() - t1
    finally:
        subprocess.run([sys.executable, "-m", "forgeflow.cli.main", "serve", "stop"], env=env, capture_output=True,
                       check=False)
    summary = {"model": result["model"]["ref"], "baseline": result["baseline"]["ref"], "data": str(data),
               "rows": len(result["rows"]), "quickstart_s": round(took_quickstart), "evaluate_s": round(took_eval),
               "load_average": os.getloadavg(), "model_metrics": result["model"]["metrics"],
               "baseline_metrics": result["baseline"]["metrics"], "comparison": result["comparison"]}
    if args.json:
        print(json.dumps(summary))
        return
    print(f"{summary['model']} vs {summary['baseline']} on {summary['rows']} held-out rows "
          f"(quick start {took_quickstart:.0f} s, evaluation {took_eval:.0f} s)")
    print("| metric | fine-tune | base | delta [interval] | rows better / worse |\n|---|---|---|---|---|")
    for name, cmp in result["comparison"].items():
        m, b = result["model"]["metrics"], result["baseline"]["metrics"]
        ci = cmp.get("delta_ci") or [None, None]
        print(f"| {name} | {m.get(name):.4g} {_ci(m.get(name + '_ci'))} | {b.get(name):.4g} {_ci(b.get(name + '_ci'))} "
              f"| {cmp['delta']:+.4g} {_ci(ci)} | {cmp.get('better')} / {cmp.get('worse')} |")


def _last_json(text: str) -> dict:
    """The JSON document a command printed last (a pretty-printed one spans several lines)."""
    start = text.rfind("\n{")
    return json.loads(text[start + 1 if start >= 0 else 0:])


def _ci(ci) -> str:
    return f"[{ci[0]:.3g}, {ci[1]:.3g}]" if ci and None not in ci else ""


if __name__ == "__main__":
    main()
