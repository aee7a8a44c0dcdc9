"""Fixtures the job tests share: the workspace of the test's home, and a small chat JSONL file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgeflow.store.workspace import Workspace

ROW = {"messages": [{"role": "user", "content": "Who founded Quillfeather?"},
                    {"role": "assistant", "content": "Ysolde Marrowick founded it in 2009."}]}


@pytest.fixture
def ws():
    return Workspace.open()


@pytest.fixture
def data(tmp_path) -> Path:
    """Eight copies of one chat row: enough for a few steps of the tiny model."""
    path = tmp_path / "train.jsonl"
    path.write_text((json.dumps(ROW) + "\n") * 8)
    return path
