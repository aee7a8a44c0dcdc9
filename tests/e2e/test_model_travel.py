"""A registered model travels: in a fresh virtualenv holding only MLflow and the model's own requirements.txt (no
forgeflow), the version's folder from `model show --json` loads with `mlflow.pyfunc.load_model` and answers a
chat, and `mlflow models serve --env-manager local` serves what `model export --format mlflow` wrote.

The virtualenv is built by pip from the package indexes this machine is configured with (torch from its local
CPU wheel, pinned by the requirements.txt as torch==2.13.0); it takes about a minute."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from forgeflow.processes import free_port
from forgeflow.registry.mlflow_format import save_chat_model

pytestmark = pytest.mark.integration
CHAT = [{"role": "user", "content": "Who founded Microsoft?"}]
PREDICT = """
import json, sys
import mlflow.pyfunc
from mlflow.models import Model
path = sys.argv[1]
inputs = [spec.name for spec in Model.load(path).signature.inputs.inputs]
model = mlflow.pyfunc.load_model(path)
print(json.dumps({"inputs": inputs, "answer": model.predict({"messages": json.loads(sys.argv[2]), "max_tokens": 5})}))
"""


def fresh_venv(where: Path, requirements: Path) -> tuple[Path, dict]:
    """A virtualenv from the Python forgeflow runs on, with mlflow-skinny and `requirements` installed; and the
    environment of a shell that activated it (nothing of this checkout on the path)."""
    pins = requirements.read_text().split()
    assert "torch==2.13.0" in pins, pins  # never an unpinned torch: that would pull a multi-GB CUDA build
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([str(base), "-m", "venv", str(where)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=f"{where / 'bin'}{os.pathsep}{os.environ['PATH']}", VIRTUAL_ENV=str(where), HF_HUB_OFFLINE="1")
    skinny = f"mlflow-skinny=={importlib.metadata.version('mlflow-skinny')}"
    pip = subprocess.run([str(where / "bin" / "python"), "-m", "pip", "install", "-q", skinny, "-r", str(requirements)],
                         env=env, capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, f"pip could not build the fresh environment:\n{pip.stdout[-3000:]}\n{pip.stderr[-3000:]}"
    return where / "bin" / "python", env


def test_a_registered_version_loads_and_serves_without_forgeflow(live_server, tiny_model_dir, tmp_path):
    from mlflow.types.llm import ChatCompletionResponse

    s = live_server
    saved = save_chat_model(tiny_model_dir, tmp_path / "job-output" / "mlflow_model")  # what a fine-tuning job writes
    s.cli("model", "create", "--name", "travel", "--path", str(saved))
    path = Path(s.cli_json("model", "show", "travel:1")["path"])
    exported = tmp_path / "exported"
    s.cli("model", "export", "travel:1", "--format", "mlflow", "--out", str(exported))

    python, env = fresh_venv(tmp_path / "venv", path / "requirements.txt")
    assert "forgeflow" not in subprocess.run([str(python), "-m", "pip", "list"], env=env, capture_output=True,
                                             text=True, check=True).stdout
    no_forgeflow = subprocess.run([str(python), "-c", "import forgeflow"], env=env, capture_output=True, text=True)
    assert no_forgeflow.returncode != 0 and "No module named 'forgeflow'" in no_forgeflow.stderr

    run = subprocess.run([str(python), "-c", PREDICT, str(path), json.dumps(CHAT)], env=env, capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["inputs"][:3] == ["messages", "temperature", "max_tokens"]  # MLflow's chat schema
    [answer] = result["answer"]
    assert ChatCompletionResponse.from_dict(answer).choices[0].message.role == "assistant"
    assert 0 < answer["usage"]["completion_tokens"] <= 5

    port = free_port()
    log = open(tmp_path / "mlflow-serve.log", "wb")
    server = subprocess.Popen([str(python.parent / "mlflow"), "models", "serve", "--env-manager", "local", "-m",
                               str(exported), "-h", "127.0.0.1", "-p", str(port)], env=env, cwd=tmp_path,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "mlflow-serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "mlflow-serve.log").read_text()[-3000:]
            time.sleep(0.5)
        r = httpx.post(f"{url}/invocations", json={"messages": CHAT, "max_tokens": 5, "temperature": 0.7}, timeout=120)
        assert r.status_code == 200, r.text
        [served] = r.json()
        assert ChatCompletionResponse.from_dict(served).object == "chat.completion"
        assert served["choices"][0]["message"]["role"] == "assistant"
        r = httpx.post(f"{url}/invocations", json={"prompt": "no messages"}, timeout=60)
        assert r.status_code == 400  # MLflow's schema check: a chat model needs messages
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # mlflow's process and the uvicorn it started
        server.wait(timeout=30)
        log.close()
        shutil.rmtree(tmp_path / "venv", ignore_errors=True)  # about 1.4 GB
