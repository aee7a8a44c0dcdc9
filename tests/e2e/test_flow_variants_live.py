"""Node variants for real: a flow laid out as Prompt flow's chat-math-variant (three variants of an llm node on
`open_ai_connection`, model gpt-4) run per variant through a forgeflow endpoint's /v1 on the tiny model, a batch
run per variant, an evaluation over each and their metrics compared."""

from __future__ import annotations

import re
import shutil

import httpx
import openai
import pytest
from flow_fixtures import VARIANT_EVAL_FLOW, VARIANT_FLOW

from forgeflow.store.workspace import Workspace

pytestmark = pytest.mark.integration

QUESTION = "Where does Quillfeather Robotics build lighthouses?"
MAX_TOKENS = {"variant_0": 3, "variant_1": 9, "variant_2": 20}


def expected_messages(variant: str, question: str) -> list[dict]:
    """What each variant's template renders to, written out by hand."""
    shots = {
        "variant_0": ("Answer in one word.", []),
        "variant_1": ('Reply with JSON holding "answer" and "reason".',
                      [("How many legs has a spider?", '{"answer": "8", "reason": "spiders are arachnids"}')]),
        "variant_2": ("You are a patient geography tutor. Name the place first, then say one thing about it.",
                      [("Which river flows through Cairo?", "The Nile. It is the longest river in Africa."),
                       ("Which ocean lies west of Portugal?", "The Atlantic. It is the second largest ocean.")]),
    }
    system, pairs = shots[variant]
    messages = [{"role": "system", "content": system}]
    for user, assistant in pairs:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return messages + [{"role": "user", "content": question}]


def token_counters(s) -> tuple[float, float]:
    """(prompt tokens read, completion tokens generated) by the endpoint's deployment so far."""
    admin = Workspace.open().admin_token()
    text = httpx.get(f"{s.url}/metrics", headers={"Authorization": f"Bearer {admin}"}, timeout=30).text

    def read(metric: str) -> float:
        m = re.search(metric + r'\{endpoint="tune-ep",deployment="blue"\} ([0-9.e+]+)', text)
        return float(m.group(1)) if m else 0.0

    return read("forgeflow_prompt_tokens_total"), read("forgeflow_generated_tokens_total")


def test_each_variant_reaches_the_endpoint_with_its_own_prompt(live_server, tiny_model_dir, tmp_path):
    s = live_server
    s.cli("online-endpoint", "create", "--name", "tune-ep")
    dep = s.cli_json("online-deployment", "create", "--name", "blue", "--endpoint-name", "tune-ep",
                     "--model", str(tiny_model_dir), "--all-traffic")
    assert dep["provisioning_state"] == "Succeeded", dep
    key = s.cli_json("online-endpoint", "get-credentials", "--name", "tune-ep")["primary_key"]
    base_url = s.cli_json("online-endpoint", "show", "--name", "tune-ep")["openai_base_url"]
    s.cli("connection", "create", "--name", "open_ai_connection", "--type", "open_ai",
          "--set", f"api_key={key}", f"base_url={base_url}")
    flow = shutil.copytree(VARIANT_FLOW, tmp_path / "prompt_variants")
    direct = openai.OpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=60)

    prompt_tokens = {}
    for variant, limit in MAX_TOKENS.items():
        before = token_counters(s)
        out = s.cli_json("flow", "test", "--flow", str(flow), "--variant", "${chat.%s}" % variant,
                         "--inputs", f"question={QUESTION}")
        read, generated = (a - b for a, b in zip(token_counters(s), before))
        assert out["variant"] == "${chat.%s}" % variant and out["nodes"]["chat"]["status"] == "Completed"
        # the same prompt, written out by hand and sent straight to the endpoint (model gpt-4 names no
        # deployment: the traffic split answers), reads as many tokens and, greedy, answers the same
        same = direct.chat.completions.create(model="gpt-4", messages=expected_messages(variant, QUESTION),
                                              max_tokens=limit, temperature=0)
        assert read == same.usage.prompt_tokens, (variant, read, same.usage.prompt_tokens)
        assert generated <= limit and same.usage.completion_tokens <= limit
        assert out["nodes"]["chat"]["output"] == same.choices[0].message.content
        prompt_tokens[variant] = read
    assert prompt_tokens["variant_0"] < prompt_tokens["variant_1"] < prompt_tokens["variant_2"], prompt_tokens

    bad = s.cli("flow", "test", "--flow", str(flow), "--variant", "${chat.variant_7}", check=False)
    assert bad.returncode == 1 and "node 'chat' has no variant 'variant_7'" in bad.stderr

    # a batch run per variant, an evaluation run over each, their metrics side by side
    data = flow / "data.jsonl"
    evals, lengths = [], {}
    for variant in MAX_TOKENS:
        before = token_counters(s)[0]
        run = s.cli_json("flow", "run", "--flow", str(flow), "--data", str(data), "--variant",
                         "${chat.%s}" % variant, "--name", f"tune-{variant}")
        assert run["status"] == "Completed" and run["completed_lines"] == 3, run
        assert run["variant"] == "${chat.%s}" % variant
        lines = s.cli_json("flow", "run", "show-details", f"tune-{variant}")
        questions = [line["inputs"]["question"] for line in lines]
        expected = sum(direct.chat.completions.create(model="gpt-4", messages=expected_messages(variant, q),
                                                      max_tokens=1, temperature=0).usage.prompt_tokens
                       for q in questions)
        assert token_counters(s)[0] - before == 2 * expected  # the run's prompts, then the same ones sent here
        lengths[variant] = sum(len(line["outputs"]["answer"]) for line in lines) / len(lines)
        ev = s.cli_json("flow", "run", "--flow", str(VARIANT_EVAL_FLOW), "--data", str(data), "--run",
                        f"tune-{variant}", "--column-mapping", "answer=${run.outputs.answer}",
                        "--column-mapping", "place=${data.place}", "--name", f"eval-{variant}")
        assert ev["status"] == "Completed" and ev["aggregation"] == "completed", ev
        evals.append(ev["name"])

    compared = s.cli_json("flow", "run", "compare", *evals)
    assert compared["metrics"] == ["named", "json", "mean_length"]
    for row, variant in zip(compared["runs"], MAX_TOKENS):
        assert (row["name"], row["variant"], row["base_run"]) == (f"eval-{variant}", "${chat.%s}" % variant,
                                                                  f"tune-{variant}")
        assert row["metrics"]["mean_length"] == pytest.approx(lengths[variant])
    table = s.cli("flow", "run", "compare", *evals).stdout
    assert "mean_length" in table and "${chat.variant_2}" in table and "eval-variant_1" in table
