"""The model-server processes of one workspace, found as an operator would find them: in /proc, by the
workspace home in their environment, whatever the server thinks it runs."""

from __future__ import annotations

from pathlib import Path

from forgeflow.processes import pid_alive


def instance_pids(home: Path) -> set[int]:
    found = set()
    marker = f"FORGEFLOW_HOME={home}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"forgeflow.inference.model_server" not in (entry / "cmdline").read_bytes().split(b"\0"):
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ and pid_alive(int(entry.name)):
            found.add(int(entry.name))
    return found
