"""Studio in headless Chromium against a real `forgeflow serve` with its own workspace.

One server and one browser serve the whole module: the tests walk the walkthrough in order (data,
fine-tune, register, deploy, chat, keys, flows), each starting from what the previous one left.
Screenshots go to $FORGEFLOW_STUDIO_SHOTS or build/studio-screenshots/.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from forgeflow.processes import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
WIDE = {"width": 1280, "height": 800}
NARROW = {"width": 400, "height": 860}


@dataclass
class Studio:
    url: str
    home: Path
    env: dict
    token: str
    proc: subprocess.Popen

    def admin(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def api(self, method: str, path: str, **kw) -> httpx.Response:
        return httpx.request(method, f"{self.url}/api{path}", headers=self.admin(), timeout=60, **kw)


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    home = tmp_path_factory.mktemp("studio-home")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, FORGEFLOW_HOME=str(home), FORGEFLOW_URL=url, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    with open(home / "test-server.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "forgeflow.cli.main", "serve"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (home / "test-server.log").read_text()
            try:
                if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        token = subprocess.run([sys.executable, "-m", "forgeflow.cli.main", "token", "show"], env=env,
                               capture_output=True, text=True, check=True).stdout.strip()
        yield Studio(url=url, home=home, env=env, token=token, proc=proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    from playwright import sync_api  # the test extra installs it

    if not CHROMIUM.exists():
        # `make test` installs it; skipping here would let a CI run pass without ever opening Studio.
        if os.environ.get("FORGEFLOW_SKIP_BROWSER") == "1":
            pytest.skip("FORGEFLOW_SKIP_BROWSER=1")
        pytest.fail(f"{CHROMIUM} is not installed: apt-get install chromium (make test does it), "
                    "or set FORGEFLOW_SKIP_BROWSER=1 to skip the browser tests")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots() -> Path:
    root = Path(__file__).resolve().parents[2]
    out = Path(os.environ.get("FORGEFLOW_STUDIO_SHOTS") or root / "build" / "studio-screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


class Browsing:
    """A signed-in page plus what the page logged: uncaught errors fail the test that caused them."""

    def __init__(self, browser, studio: Studio, shots: Path, viewport: dict) -> None:
        self.studio = studio
        self.shots = shots
        self.context = browser.new_context(viewport=viewport)
        self.context.set_default_timeout(30_000)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def sign_in(self, token: str | None = None) -> None:
        """Sign in with `token` (a personal access token), or the owner token made at init."""
        self.page.goto(f"{self.studio.url}/signin")
        self.page.fill("#token", token or self.studio.token)
        self.page.click("#submit")
        self.page.wait_for_url(f"{self.studio.url}/")
        self.page.locator(".page").first.wait_for()

    def go(self, route: str) -> None:
        """Open a Studio route (`#/jobs/ID?x=1`) and wait until that page has rendered."""
        self.page.goto(f"{self.studio.url}/{route}")
        self.wait_route(route)

    def wait_route(self, route: str) -> None:
        path = route.removeprefix("#/").split("?")[0].strip("/")
        self.page.locator(f'#main[data-route="{path}"]').wait_for(state="attached")

    def shot(self, name: str, *, full_page: bool = False) -> Path:
        path = self.shots / f"{name}.png"
        self.page.wait_for_timeout(150)  # let a redraw started by the last update land
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def close(self) -> None:
        self.context.close()


def _browsing(browser, studio, shots, viewport):
    b = Browsing(browser, studio, shots, viewport)
    yield b
    b.close()
    assert not b.errors, f"uncaught errors in the page: {b.errors}"


@pytest.fixture
def wide(browser, studio, shots):
    yield from _browsing(browser, studio, shots, WIDE)


@pytest.fixture
def narrow(browser, studio, shots):
    yield from _browsing(browser, studio, shots, NARROW)
