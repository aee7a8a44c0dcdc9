"""Small process helpers shared by the job runner, the deployment supervisor, the instances and the CLI."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

# What a placement hands an instance in its environment (never on its command line, which `ps` shows to
# every user): the secret the instance requires on each request, and the read end of its lifeline pipe.
INSTANCE_SECRET_ENV = "FORGEFLOW_INSTANCE_SECRET"
LIFELINE_FD_ENV = "FORGEFLOW_LIFELINE_FD"


def pid_alive(pid: int | None) -> bool:
    """True while the process exists and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks after boot, from /proc), or None where that cannot be read.
    A pid and its start time name one process: a pid reused later has another start time."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(") ", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def cmdline(pid: int) -> list[str] | None:
    """The process's arguments, from /proc, or None where they cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def take_instance_secret() -> str | None:
    """The secret this instance's placement passed, removed from the environment so children never inherit it."""
    return os.environ.pop(INSTANCE_SECRET_ENV, None) or None


def exit_with_parent(grace_s: float = 5.0) -> None:
    """Exit once the process that started this one is gone, however it ended (kill -9 included).

    The parent keeps the write end of a pipe and never writes; this process inherited the read end, whose
    read returns EOF when the last write end closes, i.e. when the parent died. Linux's PR_SET_PDEATHSIG
    is not used: it fires when the parent *thread* that started the child exits, and the supervisor starts
    replacements from threads that end. Without a lifeline (run by hand) this does nothing.
    """
    fd = os.environ.pop(LIFELINE_FD_ENV, None)
    if not fd:
        return
    lifeline = int(fd)
    os.set_inheritable(lifeline, False)

    def watch() -> None:
        try:
            while os.read(lifeline, 64):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)  # a clean shutdown first
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=watch, name="forgeflow-lifeline", daemon=True).start()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` (an IPv4 or IPv6 address) right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 6, limit: int = 800) -> str:
    """The last lines of a log, joined on one line, for an error message."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-limit:]
