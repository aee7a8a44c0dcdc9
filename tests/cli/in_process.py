"""The CLI against an in-process app: each CLI module's `client` is wired to a TestClient of a real app on the
test's workspace, so commands go through the REST API (guard, roles, audit) without a server process."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from forgeflow.api.app import create_app
from forgeflow.client import Client
from forgeflow.store.workspace import Workspace

runner = CliRunner()


@contextmanager
def in_process_cli(monkeypatch, modules, *, prefix: tuple[str, ...] = (),
                   token: Callable[[Workspace], str | None] = lambda ws: None) -> Iterator[Callable]:
    """Yield `invoke(*args, ok=True)`, running `forgeflow *prefix *args`; `token` picks the client's credential
    (None: the client's own choice, FORGEFLOW_TOKEN else the owner token)."""
    from forgeflow.cli import main

    ws = Workspace.open()
    with TestClient(create_app(ws, background=False)) as http:
        def make_client():
            c = Client("http://testserver", token=token(ws))
            c._http = http
            return c

        for module in modules:
            monkeypatch.setattr(module, "client", make_client)

        def invoke(*args: str, ok: bool = True):
            res = runner.invoke(main.app, [*prefix, *args])
            if ok:
                assert res.exit_code == 0, res.output
            return res

        yield invoke
