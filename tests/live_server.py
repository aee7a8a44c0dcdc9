"""A real `forgeflow serve` process on loopback with its own workspace home, driven through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from forgeflow.processes import free_port


@dataclass
class LiveServer:
    home: Path
    url: str
    env: dict
    proc: subprocess.Popen | None = None

    def cli(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        res = subprocess.run([sys.executable, "-m", "forgeflow.cli.main", *args], env=self.env, capture_output=True,
                             text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"forgeflow {' '.join(args)} exited {res.returncode}\n{res.stdout}\n{res.stderr}")
        return res

    def cli_json(self, *args: str, timeout: float = 600):
        return json.loads(self.cli(*args, "--json", timeout=timeout).stdout)

    def start(self) -> None:
        log = open(self.home / "test-server.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "forgeflow.cli.main", "serve"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.home / "test-server.log").read_text()
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    @classmethod
    def on_loopback(cls, home: Path) -> LiveServer:
        """A server (not started yet) for `home` on a free loopback port."""
        url = f"http://127.0.0.1:{free_port()}"
        env = dict(os.environ, FORGEFLOW_HOME=str(home), FORGEFLOW_URL=url, COLUMNS="200")
        home.mkdir(parents=True, exist_ok=True)
        return cls(home=home, url=url, env=env)
