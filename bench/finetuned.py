"""A small SmolLM2 LoRA fine-tune for the serving benchmarks, made once through forgeflow's own job path and kept.

    .venv/bin/python bench/finetuned.py [--steps 8] [--fresh]     # prints the cached home and model folders

The fine-tune is a real `forgeflow job create` (LoRA r=8, alpha=16, lr 2e-4, batch 4, as finetune_throughput.py)
on the sample data (every 5th row held out for validation) in a FORGEFLOW_HOME of its own under
~/.cache/forgeflow-bench/, registered as `tuned:1`. Later runs reuse that home: the benchmarks start
`forgeflow serve` in it, so the registered version (with its `adapter/` folder and its base-model tag) is the
one a deployment names, and the GGUF files the llamacpp runtime exports are kept beside the model between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from finetune_throughput import ALPHA, LR, RANK, split_sample
from llamacpp_tools import CACHE
from serve_throughput import Server

BASE = "smollm2-135m-instruct"
TUNED = "tuned"


@dataclass(frozen=True)
class Finetune:
    home: Path  # the FORGEFLOW_HOME the job ran in; serve from it
    model: Path  # the registered MLflow model folder (tuned:1)
    hf_dir: Path  # the merged Hugging Face checkpoint inside it
    adapter: Path  # the LoRA adapter folder beside it
    base_dir: Path  # the base model's folder
    val: Path  # held-out validation rows (chat JSONL)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_finetune(steps: int = 8, fresh: bool = False) -> Finetune:
    """The cached fine-tune, trained and registered on first use (a few minutes on two cores)."""
    home = CACHE / f"smollm2-lora-{steps}steps"
    done = home / "bench-finetune.json"
    if fresh:
        shutil.rmtree(home, ignore_errors=True)
    if not done.is_file():
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        _train(home, steps)
    info = json.loads(done.read_text())
    os.environ["FORGEFLOW_HOME"] = str(home)  # in-process callers read models of this home
    from forgeflow.inference.model_folder import hf_model_dir

    model = Path(info["model"])
    return Finetune(home=home, model=model, hf_dir=hf_model_dir(model), adapter=model / "adapter",
                    base_dir=Path(info["base_dir"]), val=home / "data" / "val.jsonl")


def _train(home: Path, steps: int) -> None:
    os.environ["FORGEFLOW_HOME"] = str(home)
    from forgeflow.registry.base_models import pull_base_model

    base_dir = Path(pull_base_model(BASE, progress=say).path)
    (home / "data").mkdir()
    train, val = split_sample(home / "data")
    server = Server(home)
    try:
        say(f"fine-tuning {BASE} for {steps} steps through `forgeflow job create` (once; cached in {home})")
        job = server.cli("job", "create", "--model", BASE, "--training-data", str(train), "--validation-data",
                         str(val), "--name", "bench-tuned", "--stream", "--set", f"max_steps={steps}",
                         "--set", "per_device_train_batch_size=4", "--set", f"learning_rate={LR}",
                         "--set", f"lora_r={RANK}", "--set", f"lora_alpha={ALPHA}")
        if job["status"] != "Completed":
            raise SystemExit(f"the fine-tuning job ended {job['status']}: {job.get('error')}")
        version = server.cli("model", "create", "--name", TUNED, "--from-job", job["id"])
    finally:
        server.stop()
    (home / "bench-finetune.json").write_text(json.dumps({"model": version["path"], "job": job["id"],
                                                          "base_dir": str(base_dir), "steps": steps}))


def register_copies(server: Server, count: int) -> list[str]:
    """`count` registered fine-tunes of the one base: tuned:1 and tuned-2:1 ... (the same job's output under
    other names: the same adapter weights, which the runtimes load and schedule as different adapters); returns
    their refs."""
    names = {r["name"] for r in server.cli("model", "list") if r.get("kind") != "base"}
    job = json.loads((server_home(server) / "bench-finetune.json").read_text())["job"]
    refs = [f"{TUNED}:1"]
    for i in range(2, count + 1):
        if f"{TUNED}-{i}" not in names:
            server.cli("model", "create", "--name", f"{TUNED}-{i}", "--from-job", job)
        refs.append(f"{TUNED}-{i}:1")
    return refs


def server_home(server: Server) -> Path:
    return Path(server.env["FORGEFLOW_HOME"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps of the fine-tune (default 8)")
    parser.add_argument("--fresh", action="store_true", help="train again even if cached")
    args = parser.parse_args()
    ft = ensure_finetune(args.steps, args.fresh)
    for field in ("home", "model", "hf_dir", "adapter", "base_dir", "val"):
        print(f"{field}: {getattr(ft, field)}")


if __name__ == "__main__":
    main()
