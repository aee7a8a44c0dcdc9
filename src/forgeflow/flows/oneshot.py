"""Run a flow once in its own process and report on stdout as JSON lines (the server's flow test runs).

    echo '{"flow": "DIR", "inputs": {...}, "stream": true, "variant": "${node.variant_id}"}' | python -m forgeflow.flows.oneshot

Prints `{"output": NAME, "delta": TEXT}` for each chunk of a streaming output, then one
`{"done": true, "outputs": {...}, "nodes": {...}, "duration_s": S, "details": PATH}` or
`{"error": TYPE, "message": TEXT}`. A process per run keeps a flow's own code, its environment
variables and a run that hangs away from the server, which can kill it at any time.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from forgeflow.errors import ForgeflowError, shorten

_events = sys.stdout


def _emit(event: dict[str, Any]) -> None:
    _events.write(json.dumps(event, ensure_ascii=False, default=repr) + "\n")
    _events.flush()


def _keep_stdout_for_events() -> None:
    """Events go to the real stdout; whatever the flow's code prints goes to stderr instead."""
    global _events
    _events = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def run(request: dict[str, Any]) -> int:
    from forgeflow.flows.chat import drain
    from forgeflow.flows.executor import run_flow, write_details
    from forgeflow.flows.result import jsonable
    from forgeflow.store.connections import local_connection_lookup

    flow = Path(request["flow"])
    result = run_flow(flow, request.get("inputs") or {}, connection_provider=local_connection_lookup(),
                      stream=bool(request.get("stream")), variant=request.get("variant"))
    result.outputs = drain(result.outputs, lambda name, chunk: _emit({"output": name, "delta": chunk}))
    details = write_details(flow, result) if request.get("keep_details", True) else None
    _emit({"done": True, "outputs": jsonable(result.outputs), "nodes": result.to_dict()["node_results"],
           "duration_s": result.duration_s, "variant": result.variant, "details": str(details) if details else None})
    return 0


def main() -> int:
    _keep_stdout_for_events()
    try:
        request = json.loads(sys.stdin.read() or "{}")
        if not isinstance(request, dict) or not isinstance(request.get("flow"), str):
            raise ValueError('stdin must hold {"flow": DIR, "inputs": {...}}')
        return run(request)
    except ForgeflowError as exc:
        partial = getattr(exc, "result", None)
        _emit(exc.to_dict() | ({"nodes": partial.to_dict()["node_results"]} if partial is not None else {}))
    except Exception as exc:  # a flow's own code failed: report it, never a bare traceback
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        _emit({"error": "FlowError", "message": shorten(detail)})
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
