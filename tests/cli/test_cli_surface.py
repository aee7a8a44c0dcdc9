"""The public CLI surface, pinned: renaming or dropping a command must be a deliberate change."""

import typer.main
from typer.testing import CliRunner

from forgeflow.cli.main import app

SURFACE = {
    "init": None,
    "version": None,
    "quickstart": None,
    "serve": {"status", "stop"},
    "whoami": None,
    "token": {"show", "rotate", "create", "list", "revoke"},
    "user": {"create", "list", "show", "update", "delete"},
    "audit": {"list"},
    "model": {"pull", "list", "create", "show", "update", "archive", "restore", "download", "export", "evaluate"},
    "data": {"prepare", "validate"},
    "job": {"create", "list", "show", "stream", "cancel", "resume"},
    "compute": {"list", "show", "create", "update", "cluster-config"},
    "online-endpoint": {"create", "list", "show", "update", "delete", "get-credentials", "invoke", "regenerate-keys",
                        "rollout"},
    "online-deployment": {"create", "list", "show", "update", "delete", "get-logs"},
    "connection": {"create", "update", "list", "show", "delete"},
    "flow": {"test", "chat", "serve", "run"},
}
NESTED = {("flow", "run"): {"compare", "list", "resume", "show", "show-details", "show-metrics"},
          ("online-endpoint", "rollout"): {"status", "cancel"}}


def _walk(cmd, prefix=()):
    yield prefix, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _walk(sub, prefix + (name,))


def test_command_tree_is_pinned():
    root = typer.main.get_command(app)
    assert set(root.commands) == set(SURFACE)
    for name, subs in SURFACE.items():
        assert set(getattr(root.commands[name], "commands", {}) or {}) == (subs or set()), name
    for (group, name), subs in NESTED.items():
        assert set(root.commands[group].commands[name].commands) == subs, (group, name)


def test_every_command_explains_itself_and_has_json():
    root = typer.main.get_command(app)
    runner = CliRunner()
    for path, cmd in _walk(root):
        if not path:
            continue
        res = runner.invoke(app, [*path, "--help"])
        assert res.exit_code == 0, (path, res.output)
        assert cmd.help, f"{' '.join(path)} has no help text"
        if not getattr(cmd, "commands", None):
            assert "--json" in res.output, f"{' '.join(path)} lacks --json"
