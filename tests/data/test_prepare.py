from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgeflow.data import SAMPLE_PATH, prepare_dataset
from forgeflow.errors import InvalidInput, NotFound


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _chat_rows(n: int) -> list[dict]:
    return [
        {
            "prompt": f"q{i}",
            "prompt_id": str(i),
            "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
        }
        for i in range(n)
    ]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


SAMPLE_ROWS = len(SAMPLE_PATH.read_text(encoding="utf-8").splitlines())


def test_sample_writes_80_20_split(tmp_path):
    result = prepare_dataset("sample", tmp_path / "out")
    assert result.source == "sample"
    assert result.total_rows == SAMPLE_ROWS
    assert result.test_rows == -(-SAMPLE_ROWS * 2 // 10)
    assert result.train_rows == SAMPLE_ROWS - result.test_rows
    assert result.train_path == tmp_path / "out" / "train_data.jsonl"
    assert result.test_path == tmp_path / "out" / "test_data.jsonl"
    train, test = _read(result.train_path), _read(result.test_path)
    assert (len(train), len(test)) == (result.train_rows, result.test_rows)
    assert set(train[0]) == {"prompt", "prompt_id", "messages"}
    ids = [r["prompt_id"] for r in train + test]
    assert len(set(ids)) == SAMPLE_ROWS


def test_split_is_reproducible_with_seed(tmp_path):
    a = prepare_dataset("sample", tmp_path / "a", seed=7)
    b = prepare_dataset("sample", tmp_path / "b", seed=7)
    c = prepare_dataset("sample", tmp_path / "c", seed=8)
    assert a.train_path.read_bytes() == b.train_path.read_bytes()
    assert a.test_path.read_bytes() == b.test_path.read_bytes()
    assert a.test_path.read_bytes() != c.test_path.read_bytes()


@pytest.mark.parametrize(
    ("split", "rows"),
    [("train_sft[:10%]", round(SAMPLE_ROWS / 10)), ("train[:20]", 20), ("train[10:30]", 20), ("train", SAMPLE_ROWS)],
)
def test_sample_split_slice(tmp_path, split, rows):
    result = prepare_dataset("sample", tmp_path, split=split)
    assert result.total_rows == rows
    assert result.train_rows + result.test_rows == result.total_rows


def test_slice_takes_the_first_rows_in_file_order(tmp_path):
    src = _write_jsonl(tmp_path / "chats.jsonl", _chat_rows(50))
    result = prepare_dataset(str(src), tmp_path / "out", split="train_sft[:10]")
    kept = {r["prompt_id"] for r in _read(result.train_path) + _read(result.test_path)}
    assert kept == {str(i) for i in range(10)}


def test_local_jsonl_keeps_every_column(tmp_path):
    rows = _chat_rows(10)
    for r in rows:
        r["score"] = 0.5
    src = _write_jsonl(tmp_path / "chats.jsonl", rows)
    result = prepare_dataset(str(src), tmp_path / "out", test_size=0.3)
    assert (result.total_rows, result.train_rows, result.test_rows) == (10, 7, 3)
    assert result.source == str(src.resolve())
    written = _read(result.train_path) + _read(result.test_path)
    assert sorted(written, key=lambda r: int(r["prompt_id"])) == rows


def test_local_json_array_and_csv_and_parquet(tmp_path):
    rows = _chat_rows(10)
    (tmp_path / "chats.json").write_text(json.dumps(rows), encoding="utf-8")
    assert prepare_dataset(str(tmp_path / "chats.json"), tmp_path / "o1").total_rows == 10

    csv_path = tmp_path / "chats.csv"
    csv_path.write_text("text,label\n" + "".join(f"hello {i},{i % 2}\n" for i in range(10)), encoding="utf-8")
    result = prepare_dataset(str(csv_path), tmp_path / "o2", test_size=2)
    assert (result.train_rows, result.test_rows) == (8, 2)
    assert set(_read(result.test_path)[0]) == {"text", "label"}

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chats.parquet")
    result = prepare_dataset(str(tmp_path / "chats.parquet"), tmp_path / "o3")
    assert result.total_rows == 10
    assert _read(result.train_path)[0]["messages"][1]["role"] == "assistant"


def test_local_directory(tmp_path):
    folder = tmp_path / "raw"
    (folder / "more").mkdir(parents=True)
    _write_jsonl(folder / "a.jsonl", _chat_rows(6))
    _write_jsonl(folder / "more" / "b.jsonl", _chat_rows(4))
    assert prepare_dataset(str(folder), tmp_path / "out").total_rows == 10

    (folder / "c.csv").write_text("a\n1\n", encoding="utf-8")
    with pytest.raises(InvalidInput, match="one format"):
        prepare_dataset(str(folder), tmp_path / "out")


def test_missing_local_path_names_it(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(NotFound, match="nope.jsonl"):
        prepare_dataset(str(missing), tmp_path / "out")
    with pytest.raises(NotFound, match="no .jsonl"):
        (tmp_path / "empty").mkdir()
        prepare_dataset(str(tmp_path / "empty"), tmp_path / "out")


def test_hub_name_offline_is_not_found(tmp_path):
    with pytest.raises(NotFound, match="not in the local Hugging Face cache"):
        prepare_dataset("forgeflow-test/no-such-dataset", tmp_path, split="train_sft[:1%]")


@pytest.mark.parametrize("size", [0, 0.0, 1.0001, -0.2, 1.5, True, "0.2"])
def test_bad_test_size(tmp_path, size):
    with pytest.raises(InvalidInput, match="test-size"):
        prepare_dataset("sample", tmp_path, test_size=size)


def test_test_size_count_must_leave_train_rows(tmp_path):
    src = _write_jsonl(tmp_path / "chats.jsonl", _chat_rows(5))
    with pytest.raises(InvalidInput, match="both splits"):
        prepare_dataset(str(src), tmp_path / "out", test_size=5)


def test_tiny_dataset_is_rejected(tmp_path):
    src = _write_jsonl(tmp_path / "one.jsonl", _chat_rows(1))
    with pytest.raises(InvalidInput, match="at least 2"):
        prepare_dataset(str(src), tmp_path / "out")
    two = prepare_dataset(str(_write_jsonl(tmp_path / "two.jsonl", _chat_rows(2))), tmp_path / "out")
    assert (two.train_rows, two.test_rows) == (1, 1)


def test_bad_inputs(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{"a": \n', encoding="utf-8")
    with pytest.raises(InvalidInput, match="cannot read as json"):
        prepare_dataset(str(bad), tmp_path / "out")
    with pytest.raises(InvalidInput, match="unsupported file type"):
        (tmp_path / "notes.txt").write_text("hi", encoding="utf-8")
        prepare_dataset(str(tmp_path / "notes.txt"), tmp_path / "out")
    with pytest.raises(InvalidInput, match="split"):
        prepare_dataset("sample", tmp_path / "out", split="train[:abc]")
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(InvalidInput, match="not a directory"):
        prepare_dataset("sample", tmp_path / "file")
