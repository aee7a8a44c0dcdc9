"""Flows shipped with forgeflow (also linked from the repository's examples/ folder)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def walkthrough_flow_dir() -> Path:
    """The walkthrough's chat flow: flow.dag.yaml + integrate_with_promptflow.py, unchanged."""
    return HERE / "walkthrough-chat-flow"
