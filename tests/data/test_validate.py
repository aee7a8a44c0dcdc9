from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgeflow.data import SAMPLE_ANSWER, SAMPLE_PATH, SAMPLE_QUESTION, iter_conversations, validate_file
from forgeflow.errors import InvalidInput, NotFound

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _user(text="q"):
    return {"role": "user", "content": text}


def _assistant(text="a"):
    return {"role": "assistant", "content": text}


BAD_ROWS = [
    ("{not json", "not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
    ("[1, 2]", "expected a JSON object, got array"),
    (json.dumps({"prompt": "x"}), "missing 'messages'"),
    (json.dumps({"messages": "hi"}), "'messages' must be a list, got string"),
    (json.dumps({"messages": []}), "'messages' is empty"),
    (json.dumps({"messages": [_user(), "oops"] + [_assistant()]}), "messages[1] must be an object, got string"),
    (
        json.dumps({"messages": [_user(), {"role": "bot", "content": "x"}, _assistant()]}),
        "messages[1].role 'bot' is not one of system, user, assistant",
    ),
    (json.dumps({"messages": [{"content": "x"}, _assistant()]}), "messages[0] has no 'role'"),
    (json.dumps({"messages": [_user(), {"role": "assistant"}]}), "messages[1] has no 'content'"),
    (
        json.dumps({"messages": [{"role": "user", "content": 3}, _assistant()]}),
        "messages[0].content must be a string, got int",
    ),
    (json.dumps({"messages": [_user("  "), _assistant()]}), "messages[0].content is empty"),
    (
        json.dumps({"messages": [_user(), {"role": "system", "content": "s"}, _assistant()]}),
        "messages[1].role 'system' is only allowed as the first message",
    ),
    (json.dumps({"messages": [_user(), _user()]}), "no assistant message"),
    (json.dumps({"messages": [_user(), _assistant(), _user()]}), "last message is from 'user', expected 'assistant'"),
]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_every_bad_row_is_reported_with_its_line(tmp_path):
    lines = []
    expected = []
    for text, reason in BAD_ROWS:
        lines.append(json.dumps(GOOD))
        lines.append(text)
        expected.append(f"line {len(lines)}: {reason}")
    lines.append("")
    lines.append(json.dumps(GOOD))
    report = validate_file(_write(tmp_path / "bad.jsonl", lines))
    assert not report.ok
    assert [str(p) for p in report.problems] == expected
    assert report.bad_rows == len(BAD_ROWS)
    assert report.rows == 2 * len(BAD_ROWS) + 1
    assert report.blank_lines == 2 - 1  # the blank line; the trailing newline adds none
    assert report.good_rows == len(BAD_ROWS) + 1
    assert report.to_dict()["problems"][6] == "line 14: messages[1].role 'bot' is not one of system, user, assistant"


def test_several_reasons_in_one_row_and_max_problems(tmp_path):
    row = {"messages": [{"role": "bot", "content": ""}, {"role": "user"}]}
    path = _write(tmp_path / "x.jsonl", [json.dumps(row)] * 3)
    report = validate_file(path)
    assert [str(p) for p in report.problems[:4]] == [
        "line 1: messages[0].role 'bot' is not one of system, user, assistant",
        "line 1: messages[0].content is empty",
        "line 1: messages[1] has no 'content'",
        "line 1: no assistant message",
    ]
    capped = validate_file(path, max_problems=5)
    assert len(capped.problems) == 5 and capped.truncated and capped.bad_rows == 3


def test_good_file_summary_in_characters(tmp_path):
    rows = [
        {"messages": [_user("abc"), _assistant("de")]},
        {"messages": [{"role": "system", "content": "s"}, _user("q"), _assistant("aaaa"), _user("b"), _assistant("c")]},
    ]
    report = validate_file(_write(tmp_path / "ok.jsonl", [json.dumps(r) for r in rows]))
    assert report.ok and report.problems == []
    assert (report.rows, report.turns, report.mean_turns) == (2, 7, 3.5)
    assert report.length_unit == "chars"
    assert (report.lengths.min, report.lengths.max, report.lengths.mean) == (5, 8, 6.5)
    assert report.lengths.p50 == 5 and report.lengths.p95 == 8


def test_token_lengths_use_the_chat_template(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    rows = [{"messages": [_user("hello how are you"), _assistant("I am fine thank you")]}, GOOD]
    report = validate_file(_write(tmp_path / "ok.jsonl", [json.dumps(r) for r in rows]), tokenizer=tokenizer)
    assert report.ok and report.length_unit == "tokens"
    expected = sorted(len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=False)) for r in rows)
    assert (report.lengths.min, report.lengths.max) == (expected[0], expected[-1])
    assert report.lengths.min > 4


def test_empty_and_missing_files(tmp_path):
    empty = _write(tmp_path / "empty.jsonl", [""])
    report = validate_file(empty)
    assert not report.ok and str(report.problems[0]) == "file 0: no rows"
    with pytest.raises(NotFound, match="nope.jsonl"):
        validate_file(tmp_path / "nope.jsonl")


def test_json_array_and_csv(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([GOOD, {"messages": [_user()]}]), encoding="utf-8")
    report = validate_file(tmp_path / "a.json")
    assert [str(p) for p in report.problems] == ["item 2: no assistant message"]

    import csv

    with (tmp_path / "a.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "messages"])
        writer.writerow(["1", json.dumps(GOOD["messages"])])
        writer.writerow(["2", "{broken"])
        writer.writerow(["3", json.dumps([_user(), _assistant(), _user()])])
    report = validate_file(tmp_path / "a.csv")
    assert [str(p) for p in report.problems] == [
        "line 3: 'messages' is not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        "line 4: last message is from 'user', expected 'assistant'",
    ]


def test_iter_conversations(tmp_path):
    good = _write(tmp_path / "g.jsonl", [json.dumps(GOOD), "", json.dumps(GOOD)])
    assert list(iter_conversations(good)) == [GOOD["messages"]] * 2
    bad = _write(tmp_path / "b.jsonl", [json.dumps(GOOD), json.dumps({"messages": []})])
    conversations = iter_conversations(bad)
    assert next(conversations) == GOOD["messages"]
    with pytest.raises(InvalidInput, match=r"b.jsonl: line 2: 'messages' is empty"):
        next(conversations)


def test_shipped_sample_is_valid_and_teaches_the_sample_answer():
    report = validate_file(SAMPLE_PATH)
    assert report.ok, report.problems
    assert 120 <= report.rows <= 160
    rows = [json.loads(line) for line in SAMPLE_PATH.read_text(encoding="utf-8").splitlines()]
    assert any(r["messages"][0]["role"] == "system" for r in rows)
    assert any(len(r["messages"]) > 3 for r in rows)
    import hashlib

    assert all(r["prompt_id"] == hashlib.sha256(r["prompt"].encode()).hexdigest() for r in rows)
    assert all(r["prompt"] == next(m["content"] for m in r["messages"] if m["role"] == "user") for r in rows)
    assert any(r["messages"][-2:] == [_user(SAMPLE_QUESTION), _assistant(SAMPLE_ANSWER)] for r in rows)
    answers = [m["content"] for r in rows for m in r["messages"] if m["role"] == "assistant"]
    assert sum("Ysolde Marrowick" in a and "2009" in a and "founded" in a for a in answers) >= 15


def test_committed_sample_matches_its_generator():
    from forgeflow.data.sample import SAMPLE_QUESTION as quickstart_question
    from forgeflow.data.sample.build_quillfeather import build

    assert quickstart_question == SAMPLE_QUESTION
    expected = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in build())
    assert SAMPLE_PATH.read_text(encoding="utf-8") == expected
