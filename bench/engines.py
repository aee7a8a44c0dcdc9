"""The engines the serving benchmark compares forgeflow with, and what it reads off processes.

- `batched_bench`: llama.cpp's `llama-batched-bench` (built by llamacpp_tools.py) on a GGUF file, its
  text-generation tokens/s (S_TG) per batch size, and its generated tokens over prompt and generation time together;
- `LlamaServer`: llama.cpp's `llama-server` with `--parallel N` and continuous batching, OpenAI-compatible;
- `ModelServer`: forgeflow's own model server started by the bench (an instance answers only the secret its
  starter gives it), with any extra flags;
- `instance_pids`, `rss_mb`, `mapped_ggufs`: a deployment's instance processes, their resident memory and the
  GGUF files they map (which level a deployment serves is the file its instance has open).
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    from forgeflow.processes import free_port as pick

    return pick()


def batched_bench(binary: Path, gguf: Path, *, threads: int, prompt: int, tokens: int,
                  batches: list[int]) -> dict[int, dict[str, float]]:
    """llama.cpp's own batched decoding, for each batch size B: {"tg": text-generation tokens/s (S_TG), "whole":
    the B sequences' generated tokens over the time of their prompts and generation together}."""
    ctx = max(batches) * (prompt + tokens) + 64
    cmd = [str(binary), "-m", str(gguf), "-c", str(ctx), "-b", "2048", "-ub", "512", "-npp", str(prompt),
           "-ntg", str(tokens), "-npl", ",".join(map(str, batches)), "-t", str(threads), "-tb", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"llama-batched-bench failed ({done.returncode}): {done.stderr[-1500:]}")
    return parse_batched_bench(done.stdout + done.stderr)


def parse_batched_bench(text: str) -> dict[int, dict[str, float]]:
    """The markdown table llama-batched-bench prints: | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | ..."""
    header, out = None, {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if "S_TG t/s" in cells:
            header = cells
        elif header and len(cells) == len(header) and re.fullmatch(r"\d+", cells[header.index("B")]):
            row = {name: float(cells[header.index(name)]) for name in ("B", "TG", "T_PP s", "T_TG s", "S_TG t/s")}
            whole = row["B"] * row["TG"] / (row["T_PP s"] + row["T_TG s"])
            out[int(row["B"])] = {"tg": row["S_TG t/s"], "whole": whole}
    if not out:
        raise RuntimeError(f"no result table in llama-batched-bench's output: {text[-1500:]}")
    return out


class _Served:
    """A server process the bench started: its OpenAI chat URL, and stopping it."""

    url: str
    proc: subprocess.Popen
    log: Any

    @property
    def chat_url(self) -> str:
        return f"{self.url}/v1/chat/completions"

    def stop(self) -> None:
        stop(self.proc)
        self.log.close()


class LlamaServer(_Served):
    """llama.cpp's own server on a GGUF file, `--parallel` slots decoded together (continuous batching)."""

    def __init__(self, binary: Path, gguf: Path, *, threads: int, parallel: int, ctx_per_slot: int = 1024,
                 log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log or os.devnull, "ab")
        self.proc = subprocess.Popen(
            [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(self.port), "-t", str(threads),
             "-tb", str(threads), "--parallel", str(parallel), "-cb", "-c", str(ctx_per_slot * parallel)],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_ready(f"{self.url}/health", {}, self.proc, "llama-server")


class ModelServer(_Served):
    """forgeflow's model server, started by the bench with its own secret."""

    def __init__(self, model_dir: Path, runtime: str, *extra: str, log: Path | None = None,
                 program: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        """`program`: what to run instead of the model server's module (a traced model server, which takes the
        model server's arguments); `env`: variables added to its environment."""
        from forgeflow.processes import INSTANCE_SECRET_ENV

        self.port, secret = free_port(), secrets.token_urlsafe(32)
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {secret}"}
        self.log = open(log or os.devnull, "ab")
        self.proc = subprocess.Popen(
            [*(program or [sys.executable, "-m", "forgeflow.inference.model_server"]), "--model-dir", str(model_dir),
             "--runtime", runtime, "--port", str(self.port), "--name", "direct", *extra],
            env={**os.environ, **(env or {}), INSTANCE_SECRET_ENV: secret}, stdout=self.log, stderr=subprocess.STDOUT)
        wait_ready(f"{self.url}/health", self.headers, self.proc, "the model server")


def model_server_flags() -> str:
    """The model server's --help, to see which flags this forgeflow has (--adapter, --no-prefix-cache)."""
    return subprocess.run([sys.executable, "-m", "forgeflow.inference.model_server", "--help"], capture_output=True,
                          text=True, check=False).stdout


def wait_ready(url: str, headers: dict, proc: subprocess.Popen, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        time.sleep(0.3)
    stop(proc)
    raise RuntimeError(f"{what} was not ready after {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _children(pid: int) -> list[int]:
    """Every descendant of a process (Linux /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def instance_pids(server_pid: int) -> list[int]:
    """The model-server processes started under the forgeflow server with this pid."""
    out = []
    for pid in _children(server_pid):
        try:
            if b"forgeflow.inference.model_server" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            continue
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (a runtime may run helpers), MB."""
    total = 0
    for each in [pid, *_children(pid)]:
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total * 1024 / 1e6


def mapped_ggufs(pid: int) -> list[Path]:
    """GGUF files a process has mapped (llama.cpp mmaps the model it serves)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return []
    return sorted({Path(line.split(None, 5)[5]) for line in maps.splitlines()
                   if len(line.split(None, 5)) == 6 and line.rstrip().endswith(".gguf")})


def gguf_level(path: Path) -> str:
    """forgeflow's cached GGUF files are named forgeflow-<type>.gguf."""
    match = re.fullmatch(r"forgeflow-([a-z0-9_]+)\.gguf", path.name)
    return match.group(1) if match else path.name
