"""Model folders for evaluation tests: a LoRA trained a few steps on the evaluation rows (better) and a random one
(worse), each merged into the tiny base model as a registered fine-tune's folder holds it."""

from __future__ import annotations

import json
from pathlib import Path

QA = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Who founded Microsoft?", "Bill Gates and Paul Allen founded Microsoft."),
    ("What does Quillfeather Robotics build?", "Tidal-powered lighthouses."),
    ("How are you?", "I am fine thank you."),
]


def chat_rows(pairs=QA) -> list[dict]:
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def merged(base: Path, out: Path, peft_model) -> Path:
    from transformers import AutoTokenizer

    peft_model.merge_and_unload().save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def trained_model(base: Path, out: Path, rows: list[dict], *, steps: int = 40) -> Path:
    """The base with a LoRA trained on `rows` (loss on assistant turns, training's masking), merged."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forgeflow.training.masking import IGNORE_INDEX, tokenize_conversation

    tok = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
        r=16, lora_alpha=64, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    convs = [tokenize_conversation(tok, r["messages"], 256) for r in rows]
    width = max(len(c.input_ids) for c in convs)
    ids = torch.tensor([c.input_ids + [tok.pad_token_id] * (width - len(c.input_ids)) for c in convs])
    labels = torch.tensor([c.labels + [IGNORE_INDEX] * (width - len(c.labels)) for c in convs])
    mask = (torch.arange(width)[None, :] < torch.tensor([len(c.input_ids) for c in convs])[:, None]).long()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        optim.zero_grad()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optim.step()
    model.eval()
    return merged(base, out, model)


def random_adapter_model(base: Path, out: Path, *, seed: int) -> Path:
    """The base with tests/tiny.py's random LoRA adapter merged in."""
    from peft import PeftModel
    from tiny import build_tiny_adapter
    from transformers import AutoModelForCausalLM

    adapter = build_tiny_adapter(base, out.with_name(out.name + "-adapter"), seed=seed)
    return merged(base, out, PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter))


# A deterministic judge flow (python only): 1.0 when the answer contains the reference, 0.5 without a reference;
# it fails on the answer "boom" and scores "way off" out of range.
JUDGE_FLOW = """\
inputs:
  question: {type: string}
  answer: {type: string}
  reference: {type: string, default: ""}
outputs:
  score: {type: double, reference: "${grade.output}"}
nodes:
- name: grade
  type: python
  source: {type: code, path: grade.py}
  inputs: {question: "${inputs.question}", answer: "${inputs.answer}", reference: "${inputs.reference}"}
"""
_GRADE = """\
from promptflow import tool


@tool
def grade(question: str, answer: str, reference: str):
    if answer == "boom":
        raise RuntimeError("the judge broke")
    if answer == "way off":
        return 7
    if not reference:
        return 0.5
    return 1.0 if reference.lower() in answer.lower() else 0.0
"""


def write_python_judge(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flow.dag.yaml").write_text(JUDGE_FLOW)
    (folder / "grade.py").write_text(_GRADE)
    return folder
