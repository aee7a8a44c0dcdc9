import json

from forgeflow.training.checkpoints import (
    COUNTERS_FILE,
    checkpoint_step,
    is_complete,
    newest_checkpoint,
    remove_incomplete,
)


def write_checkpoint(root, step, *, weights=True, state="whole"):
    """A checkpoint folder as the trainer leaves it when stopped at some point of writing it."""
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / COUNTERS_FILE).write_text(json.dumps({"trained_tokens": 1, "loss_tokens": 1}))
    if weights:
        (folder / "adapter_model.safetensors").write_bytes(b"weights")
    text = json.dumps({"global_step": step, "log_history": []})
    if state == "whole":
        (folder / "trainer_state.json").write_text(text)
    elif state == "half":
        (folder / "trainer_state.json").write_text(text[: len(text) // 2])
    return folder


def test_newest_complete_checkpoint_wins_over_a_half_written_one(tmp_path):
    write_checkpoint(tmp_path, 3)
    six = write_checkpoint(tmp_path, 6)
    write_checkpoint(tmp_path, 9, state="half")  # killed while writing trainer_state.json
    write_checkpoint(tmp_path, 12, state=None)  # killed after the weights
    write_checkpoint(tmp_path, 15, weights=False, state=None)  # killed right after the counters
    (tmp_path / "checkpoint-latest").mkdir()
    (tmp_path / "checkpoint-18").write_text("not a folder")

    assert newest_checkpoint(tmp_path) == six
    assert checkpoint_step(six) == 6


def test_no_checkpoints(tmp_path):
    assert newest_checkpoint(tmp_path) is None
    assert newest_checkpoint(tmp_path / "missing") is None
    assert not is_complete(write_checkpoint(tmp_path, 1, state=None))
    assert newest_checkpoint(tmp_path) is None


def test_step_from_the_folder_name_when_the_state_is_unreadable(tmp_path):
    assert checkpoint_step(write_checkpoint(tmp_path, 7, state="half")) == 7


def test_remove_incomplete_keeps_complete_ones(tmp_path):
    keep = write_checkpoint(tmp_path, 3)
    write_checkpoint(tmp_path, 6, state="half")
    write_checkpoint(tmp_path, 9, state=None)
    other = tmp_path / "checkpoint-notes"
    other.mkdir()

    assert remove_incomplete(tmp_path) == ["checkpoint-6", "checkpoint-9"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "checkpoint-notes"]
    assert keep.is_dir() and remove_incomplete(tmp_path / "missing") == []
