"""Fine-tuning throughput: plain and expert TRL SFTTrainer vs forgeflow's trainer, same data, rank and steps.

    .venv/bin/python bench/finetune_throughput.py --steps 20 [--repeat 3] [--json] [--levers ...]

The baseline needs TRL, which forgeflow itself does not: pip install -e '.[bench]'.

Pulls SmolLM2-135M-Instruct into a temporary FORGEFLOW_HOME, splits the sample data 80/20 and fine-tunes
LoRA (same rank, alpha, targets, learning rate, batch size, steps) three times, each run in its own process so
peak memory (RSS) is its own:

- plain: TRL's SFTTrainer the way its docs show it: SFTConfig defaults (packing off, gradient
  checkpointing on, logging every 10 steps), `peft_config=LoraConfig(...)`; only `use_cpu`/`bf16=False`
  (the defaults refuse to start on a CPU), the step count, batch size and learning rate are set.
- expert TRL: the same SFTTrainer configured the way an expert would for speed: packing on (rows of 512 tokens,
  as forgeflow's), gradient checkpointing off, LoRA dropout 0 (forgeflow's defaults), everything else as plain.
- forgeflow: the worker's code path (masking, packing, ForgeflowTrainer, the worker's TrainingArguments).

Tokens/s counts real (non-pad) input tokens of the batches trained on, over trainer.train()'s wall time,
for both. Validation loss is measured the same way for both after training: mean cross-entropy over the
assistant tokens of the held-out 20%. `--levers` adds forgeflow runs with one lever switched back each.
`--repeat N` runs every configuration N times, interleaved (plain, forgeflow, expert, levers, plain, ...), and reports
the median of each figure and the median of the per-round ratios, so a burst of load on a shared machine
moves one round, not the result.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RANK, ALPHA, LR = 8, 16, 2e-4
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# -- data shared by both runs -----------------------------------------------------
def split_sample(out: Path) -> tuple[Path, Path]:
    from forgeflow.data.sample import SAMPLE_PATH

    rows = [line for line in SAMPLE_PATH.read_text().splitlines() if line.strip()]
    train = [r for i, r in enumerate(rows) if i % 5 != 4]
    val = [r for i, r in enumerate(rows) if i % 5 == 4]
    (out / "train.jsonl").write_text("\n".join(json.dumps({"messages": json.loads(r)["messages"]}) for r in train))
    (out / "val.jsonl").write_text("\n".join(json.dumps({"messages": json.loads(r)["messages"]}) for r in val))
    return out / "train.jsonl", out / "val.jsonl"


def validation_loss(model, tokenizer, val_path: Path) -> float:
    """Mean cross-entropy over assistant tokens of the validation file (forgeflow's masking for both runs)."""
    import torch
    import torch.nn.functional as F

    from forgeflow.training.dataset import iter_messages
    from forgeflow.training.masking import IGNORE_INDEX, tokenize_conversation

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for messages in iter_messages(val_path):
            conv = tokenize_conversation(tokenizer, messages, 1024)
            ids = torch.tensor([conv.input_ids])
            labels = torch.tensor(conv.labels[1:])
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
            keep = labels != IGNORE_INDEX
            total += float(F.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            count += int(keep.sum())
    return total / count


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the two runs -----------------------------------------------------------------
def run_trl(model_dir: str, train: Path, val: Path, steps: int, batch: int, out: Path, *, expert: bool) -> dict:
    """TRL's SFTTrainer as its docs show it, or (expert) with packing, no checkpointing and no LoRA dropout."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    dataset = load_dataset("json", data_files=str(train), split="train")
    # forgeflow packs rows of max_seq_length 512; the expert packs to the same length (TRL's default is 1024)
    tuned = {"packing": True, "gradient_checkpointing": False, "max_length": 512} if expert else {}
    config = SFTConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, learning_rate=LR,
        use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(), report_to="none",
        save_strategy="no", disable_tqdm=True, **tuned,
    )
    peft_config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0 if expert else 0.05, target_modules=TARGETS,
                             task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model_dir, args=config, train_dataset=dataset, peft_config=peft_config)
    counted = _count_tokens(trainer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return _result("expert TRL SFTTrainer" if expert else "plain TRL SFTTrainer", counted[0], seconds, trainer, val)


def run_forgeflow(model_dir: str, train: Path, val: Path, steps: int, batch: int, out: Path, lever: str) -> dict:
    import torch
    from transformers import AutoTokenizer, TrainingArguments

    from forgeflow.names import parse_assignments
    from forgeflow.training.dataset import prepare
    from forgeflow.training.hyperparams import resolve_hyperparameters
    from forgeflow.training.packing import PackedCollator
    from forgeflow.training.trainer import ForgeflowTrainer
    from forgeflow.training.worker import load_model, resolve_precision, training_arguments

    settings = {"max_steps": steps, "per_device_train_batch_size": batch, "learning_rate": LR, "lora_r": RANK,
                "lora_alpha": ALPHA, "evaluation_strategy": "no", "logging_steps": 10, "save_steps": 10**6}
    if lever == "no-packing":
        settings["packing"] = False
    if lever == "gradient-checkpointing":
        settings["gradient_checkpointing"] = True
    if "=" in lever:  # any hyperparameter: precision=bf16, lora_dropout=0.05, max_seq_length=256 ...
        settings |= parse_assignments([lever], "--levers", "precision=bf16")
    hp = resolve_hyperparameters(settings)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = prepare(train, tokenizer, hp.data.max_seq_length, hp.data.packing)
    use_cuda = torch.cuda.is_available()
    precision = resolve_precision(hp.memory.precision, use_cuda)
    model = load_model(model_dir, hp, precision, use_cuda)
    args = training_arguments(TrainingArguments, hp, out, precision, use_cuda, evaluating=False)
    args.report_to, args.save_strategy = [], "no"
    trainer = ForgeflowTrainer(model=model, args=args, train_dataset=data.rows,
                               data_collator=PackedCollator(tokenizer.pad_token_id), processing_class=tokenizer)
    if lever == "full-logits":
        trainer.full_logits = True
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    name = "forgeflow" + (f" ({lever})" if lever else "")
    return _result(name, trainer.trained_tokens, seconds, trainer, val, tokenizer)


def _count_tokens(trainer) -> list[int]:
    """Wrap the trainer's collator to count non-pad tokens of every training batch: the attention mask's ones, or
    every input id when TRL packs padding-free (one row of concatenated sequences, no mask)."""
    counted = [0]
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        if trainer.model.training:
            mask = batch.get("attention_mask")
            counted[0] += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        return batch

    trainer.data_collator = counting
    return counted


def _result(name: str, tokens: int, seconds: float, trainer, val: Path, tokenizer=None) -> dict:
    tokenizer = tokenizer or trainer.processing_class
    return {
        "name": name, "steps": trainer.state.global_step, "tokens": tokens, "train_seconds": round(seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1), "peak_memory_mb": round(peak_rss_mb(), 1),
        "val_loss": round(validation_loss(trainer.model, tokenizer, val), 4),
    }


# -- driver -----------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    import torch

    torch.manual_seed(0)
    out = Path(args.work) / f"out-{args.variant}-{args.lever or 'base'}"
    train, val = Path(args.work) / "train.jsonl", Path(args.work) / "val.jsonl"
    if args.variant in ("plain", "expert"):
        result = run_trl(args.model, train, val, args.steps, args.batch, out, expert=args.variant == "expert")
    else:
        result = run_forgeflow(args.model, train, val, args.steps, args.batch, out, args.lever)
    print("RESULT " + json.dumps(result), flush=True)


def spawn(work: Path, model: str, steps: int, batch: int, variant: str, lever: str = "") -> dict:
    cmd = [sys.executable, __file__, "--_child", "--variant", variant, "--lever", lever, "--work", str(work),
           "--model", model, "--steps", str(steps), "--batch", str(batch)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"{variant} {lever} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps for each run")
    parser.add_argument("--batch", type=int, default=4, help="per_device_train_batch_size for both runs")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every configuration; medians are reported")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--levers", default="", help="comma list of forgeflow levers to switch back, e.g. "
                        "no-packing,gradient-checkpointing,full-logits, or any NAME=VALUE hyperparameter (precision=bf16, "
                        "lora_dropout=0.05)")
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="", help=argparse.SUPPRESS)
    parser.add_argument("--lever", default="", help=argparse.SUPPRESS)
    parser.add_argument("--work", default="", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        return child(args)
    if importlib.util.find_spec("trl") is None:
        raise SystemExit("the plain TRL baseline needs trl, which forgeflow does not install: "
                         "pip install -e '.[bench]'")

    with tempfile.TemporaryDirectory(prefix="ff-bench-") as tmp:
        work = Path(tmp)
        os.environ["FORGEFLOW_HOME"] = str(work / "home")
        from forgeflow.registry.base_models import pull_base_model

        model = str(pull_base_model("smollm2-135m-instruct").path)
        split_sample(work)
        rounds = []
        for _ in range(args.repeat):
            runs = [spawn(work, model, args.steps, args.batch, "plain"),
                    spawn(work, model, args.steps, args.batch, "forgeflow"),
                    spawn(work, model, args.steps, args.batch, "expert")]
            runs += [spawn(work, model, args.steps, args.batch, "forgeflow", lever)
                     for lever in filter(None, args.levers.split(","))]
            rounds.append(runs)
    report = summarize(rounds)
    report |= {"steps": args.steps, "batch": args.batch, "repeat": args.repeat, "cpu_count": os.cpu_count(),
               "load_average": [round(x, 2) for x in os.getloadavg()]}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{'run (median of ' + str(args.repeat) + ')':40} {'tokens/s':>9} {'tokens':>8} {'train s':>8} "
          f"{'peak MB':>8} {'val loss':>9} {'vs plain':>9}")
    for r in report["runs"]:
        print(f"{r['name']:40} {r['tokens_per_second']:9.1f} {r['tokens']:8.0f} {r['train_seconds']:8.1f} "
              f"{r['peak_memory_mb']:8.0f} {r['val_loss']:9.4f} {r['ratio_vs_plain']:8.2f}x")
    print(f"ratio forgeflow / plain TRL (median of per-round ratios): {report['ratio']:.2f}x; "
          f"per round: {report['ratios']}")
    print(f"ratio forgeflow / expert TRL (median of per-round ratios): {report['ratio_vs_expert']:.2f}x; "
          f"per round: {report['ratios_vs_expert']}")


def summarize(rounds: list[list[dict]]) -> dict:
    """Median of every figure per configuration, and per-round tokens/s ratios against that round's plain run."""
    names = [r["name"] for r in rounds[0]]
    runs = []
    for i, name in enumerate(names):
        samples = [rnd[i] for rnd in rounds]
        ratios = [rnd[i]["tokens_per_second"] / rnd[0]["tokens_per_second"] for rnd in rounds]
        med = {k: statistics.median(s[k] for s in samples)
               for k in ("tokens", "train_seconds", "tokens_per_second", "peak_memory_mb", "val_loss")}
        runs.append({"name": name, **med, "ratio_vs_plain": round(statistics.median(ratios), 2),
                     "tokens_per_second_samples": [s["tokens_per_second"] for s in samples]})
    ratios = [round(rnd[1]["tokens_per_second"] / rnd[0]["tokens_per_second"], 2) for rnd in rounds]
    vs_expert = [round(rnd[1]["tokens_per_second"] / rnd[2]["tokens_per_second"], 2) for rnd in rounds]
    return {"runs": runs, "plain": runs[0], "forgeflow": runs[1], "expert": runs[2], "ratio": statistics.median(ratios),
            "ratios": ratios, "ratio_vs_expert": statistics.median(vs_expert), "ratios_vs_expert": vs_expert}


if __name__ == "__main__":
    main()
