"""Which checkpoint a job can continue from.

The trainer writes a checkpoint folder in several steps: forgeflow's token counters, the weights, the optimizer,
scheduler and RNG states, and trainer_state.json last (only then does it rotate older checkpoints away). A worker
killed half-way leaves a folder without a readable trainer_state.json: such a folder is never resumed from, so a kill
at any moment costs at most the steps since the previous checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

COUNTERS_FILE = "forgeflow_counters.json"


def _state(checkpoint: Path) -> dict | None:
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("global_step"), int) else None


def is_complete(checkpoint: Path) -> bool:
    return _state(checkpoint) is not None


def newest_checkpoint(checkpoints: Path) -> Path | None:
    """The highest-step complete `checkpoint-N` folder under `checkpoints`, if any."""
    found = []
    for p in Path(checkpoints).glob("checkpoint-*"):
        suffix = p.name.rsplit("-", 1)[-1]
        if suffix.isdigit() and p.is_dir() and is_complete(p):
            found.append((int(suffix), p))
    return max(found)[1] if found else None


def checkpoint_step(checkpoint: Path) -> int:
    state = _state(checkpoint)
    return state["global_step"] if state else int(checkpoint.name.rsplit("-", 1)[-1])


def remove_incomplete(checkpoints: Path) -> list[str]:
    """Delete half-written `checkpoint-N` folders (a worker killed while saving); returns their names."""
    removed = []
    for p in sorted(Path(checkpoints).glob("checkpoint-*")):
        if p.name.rsplit("-", 1)[-1].isdigit() and p.is_dir() and not is_complete(p):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed
