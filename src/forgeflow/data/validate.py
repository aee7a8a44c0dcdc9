"""Check training files row by row before training: every bad row is reported with its line number.

Formats: JSON Lines (any extension other than the ones below), a ``.json`` array of objects
(positions reported as ``item N``; a ``.json`` file that is not one array is read as JSON Lines),
``.csv`` with a ``messages`` column holding JSON (preference data: ``prompt``, ``chosen`` and
``rejected`` columns, each plain text or JSON), and ``.parquet`` (``row N``). Blank lines in
JSON Lines are skipped and counted in ``blank_lines``, never reported as problems.

The training method picks the row shape (`METHODS`). A chat row (sft) is good when it is an object
whose ``messages`` is a non-empty list of objects with ``role`` in system/user/assistant and a
non-empty string ``content``; ``system`` may only come first, and the last message is from the
assistant (so at least one assistant turn exists). A preference row (dpo) has ``prompt`` (a string,
read as one user message, or a list of messages ending with a user turn) and ``chosen`` and ``rejected``
(each a string or a list of assistant messages), the shapes TRL's conversational preference
datasets use; chosen and rejected must differ.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from forgeflow.chat import ROLES
from forgeflow.errors import InvalidInput, NotFound


@dataclass(frozen=True)
class Problem:
    """One reason a row is bad; `line` is 1-based in the unit named by `unit`."""

    line: int
    message: str
    unit: str = "line"

    def __str__(self) -> str:
        return f"{self.unit} {self.line}: {self.message}"


@dataclass(frozen=True)
class LengthStats:
    """Distribution of per-row lengths, in tokens or characters."""

    min: int
    mean: float
    p50: int
    p95: int
    max: int

    @classmethod
    def of(cls, values: list[int]) -> LengthStats:
        ordered = sorted(values)
        return cls(
            min=ordered[0],
            mean=round(sum(ordered) / len(ordered), 2),
            p50=_percentile(ordered, 50),
            p95=_percentile(ordered, 95),
            max=ordered[-1],
        )


@dataclass
class ValidationReport:
    """Outcome of `validate_file`; the summary fields count good rows only."""

    path: Path
    rows: int = 0
    bad_rows: int = 0
    blank_lines: int = 0
    turns: int = 0
    length_unit: str = "chars"
    lengths: LengthStats | None = None
    problems: list[Problem] = field(default_factory=list)
    truncated: bool = False
    # The other method whose shape every row has, when no row fits the method checked: what to validate with.
    fits_method: str | None = None

    @property
    def ok(self) -> bool:
        return self.bad_rows == 0 and self.rows > 0

    @property
    def good_rows(self) -> int:
        return self.rows - self.bad_rows

    @property
    def mean_turns(self) -> float:
        return round(self.turns / self.good_rows, 2) if self.good_rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "ok": self.ok,
            "rows": self.rows,
            "good_rows": self.good_rows,
            "bad_rows": self.bad_rows,
            "blank_lines": self.blank_lines,
            "turns": self.turns,
            "mean_turns": self.mean_turns,
            "length_unit": self.length_unit,
            "lengths": asdict(self.lengths) if self.lengths else None,
            "problems": [str(p) for p in self.problems],
            "truncated": self.truncated,
            "fits_method": self.fits_method,
        }


PREFERENCE_KEYS = ("prompt", "chosen", "rejected")


def check_messages(row: Any) -> list[str]:
    """Every reason `row` is not a valid chat record (empty when it is)."""
    if not isinstance(row, dict):
        return [f"expected a JSON object, got {_type(row)}"]
    if "messages" not in row:
        if all(key in row for key in PREFERENCE_KEYS):
            return ["missing 'messages': this is a preference row (prompt, chosen, rejected), which method dpo "
                    "trains on; supervised fine-tuning (method sft) needs chat rows with 'messages'"]
        return ["missing 'messages'"]
    messages = row["messages"]
    if not isinstance(messages, list):
        return [f"'messages' must be a list, got {_type(messages)}"]
    if not messages:
        return ["'messages' is empty"]
    reasons = [reason for i, message in enumerate(messages) for reason in _message_reasons(message, f"messages[{i}]", i)]
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    if "assistant" not in roles:
        reasons.append("no assistant message")
    elif isinstance(messages[-1], dict) and messages[-1].get("role") != "assistant":
        reasons.append(f"last message is from {messages[-1].get('role')!r}, expected 'assistant'")
    return reasons


def check_preference(row: Any) -> list[str]:
    """Every reason `row` is not a valid preference record (empty when it is)."""
    if not isinstance(row, dict):
        return [f"expected a JSON object, got {_type(row)}"]
    missing = [key for key in PREFERENCE_KEYS if key not in row]
    if missing and "messages" in row:
        return ["this is a chat row ('messages'); method dpo trains on preference rows with 'prompt', 'chosen' and "
                "'rejected' (chat rows train with method sft)"]
    if missing:
        return [f"missing {', '.join(repr(key) for key in missing)}: a preference row has 'prompt', 'chosen' and "
                "'rejected'"]
    reasons = _prompt_reasons(row["prompt"])
    reasons += _answer_reasons(row["chosen"], "chosen") + _answer_reasons(row["rejected"], "rejected")
    if not reasons and preference_row(row)["chosen"] == preference_row(row)["rejected"]:
        reasons.append("'chosen' and 'rejected' are the same answer: nothing to prefer")
    return reasons


def preference_row(row: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    """A valid preference row in TRL's conversational shape: a string prompt becomes one user message, a string
    answer one assistant message; only role and content are kept."""

    def turns(value: Any, role: str) -> list[dict[str, str]]:
        if isinstance(value, str):
            return [{"role": role, "content": value}]
        return [{"role": m["role"], "content": m["content"]} for m in value]

    return {"prompt": turns(row["prompt"], "user"), "chosen": turns(row["chosen"], "assistant"),
            "rejected": turns(row["rejected"], "assistant")}


# What each training method trains on: its row check and the name of that shape in messages.
METHODS = {"sft": (check_messages, "chat"), "dpo": (check_preference, "preference")}


def _prompt_reasons(prompt: Any) -> list[str]:
    if isinstance(prompt, str):
        return [] if prompt.strip() else ["'prompt' is empty"]
    if not isinstance(prompt, list):
        return [f"'prompt' must be a string or a list of messages, got {_type(prompt)}"]
    if not prompt:
        return ["'prompt' is an empty list"]
    reasons = [reason for i, message in enumerate(prompt) for reason in _message_reasons(message, f"prompt[{i}]", i)]
    last = prompt[-1]
    if not reasons and last.get("role") != "user":
        reasons.append(f"prompt's last message is from {last.get('role')!r}, expected 'user' (the answers reply to it)")
    return reasons


def _answer_reasons(answer: Any, key: str) -> list[str]:
    if isinstance(answer, str):
        return [] if answer.strip() else [f"'{key}' is empty"]
    if not isinstance(answer, list):
        return [f"'{key}' must be a string or a list of assistant messages, got {_type(answer)}"]
    if not answer:
        return [f"'{key}' is an empty list"]
    reasons = []
    for i, message in enumerate(answer):
        found = _message_reasons(message, f"{key}[{i}]", i)
        if not found and message["role"] != "assistant":
            found = [f"{key}[{i}].role must be 'assistant', got {message['role']!r}"]
        reasons += found
    return reasons


def _message_reasons(message: Any, where: str, index: int) -> list[str]:
    if not isinstance(message, dict):
        return [f"{where} must be an object, got {_type(message)}"]
    reasons = []
    role, content = message.get("role"), message.get("content")
    if "role" not in message:
        reasons.append(f"{where} has no 'role'")
    elif role not in ROLES:
        reasons.append(f"{where}.role {role!r} is not one of {', '.join(ROLES)}")
    elif role == "system" and index > 0:
        reasons.append(f"{where}.role 'system' is only allowed as the first message")
    if "content" not in message:
        reasons.append(f"{where} has no 'content'")
    elif not isinstance(content, str):
        reasons.append(f"{where}.content must be a string, got {_type(content)}")
    elif not content.strip():
        reasons.append(f"{where}.content is empty")
    return reasons


def row_check(method: str) -> Any:
    """The row check of a training method (`METHODS`); an unknown method is an error naming `method`."""
    if method not in METHODS:
        raise InvalidInput(f"method {method!r} is not one of {', '.join(METHODS)}: sft checks chat rows "
                           "('messages'), dpo preference rows ('prompt', 'chosen', 'rejected')", field="method")
    return METHODS[method][0]


def validate_file(
    path: Path, *, tokenizer: Any = None, max_problems: int | None = None, method: str = "sft"
) -> ValidationReport:
    """Check every row of a training file for `method` (sft: chat rows, dpo: preference rows); with `tokenizer`,
    lengths are chat-template token counts (a preference row: its prompt with the longer answer)."""
    path = Path(path)
    check = row_check(method)
    other = next(name for name in METHODS if name != method)
    report = ValidationReport(path=path, length_unit="tokens" if tokenizer is not None else "chars")
    lengths: list[int] = []
    other_shaped = 0
    for number, unit, row in _rows(path, report, method):
        report.rows += 1
        reasons = check(row) if not isinstance(row, _Unparsed) else [row.reason]
        if reasons and not isinstance(row, _Unparsed) and not METHODS[other][0](row):
            other_shaped += 1
        if not reasons:
            conversations = [row["messages"]] if method == "sft" else _conversations(preference_row(row))
            try:
                lengths.append(max(_length(messages, tokenizer) for messages in conversations))
            except Exception as exc:  # a chat template may reject a conversation (e.g. role order)
                reasons = [f"chat template failed: {exc}"]
            else:
                report.turns += len(conversations[0])
        if reasons:
            report.bad_rows += 1
            for reason in reasons:
                if max_problems is not None and len(report.problems) >= max_problems:
                    report.truncated = True
                    break
                report.problems.append(Problem(number, reason, unit))
    if lengths:
        report.lengths = LengthStats.of(lengths)
    if report.rows and other_shaped == report.rows:
        report.fits_method = other
    if report.rows == 0:
        report.problems.append(Problem(0, "no rows", "file"))
    return report


def iter_conversations(path: Path) -> Iterator[list[dict[str, str]]]:
    """Yield each row's `messages`; raise InvalidInput naming the first bad row."""
    for _number, messages in numbered_conversations(path):
        yield messages


def numbered_conversations(path: Path) -> Iterator[tuple[int, list[dict[str, str]]]]:
    """Yield (line or item number, `messages`) for each row; raise InvalidInput naming the first bad row."""
    path = Path(path)
    for number, unit, row in _rows(path, ValidationReport(path=path)):
        reasons = check_messages(row) if not isinstance(row, _Unparsed) else [row.reason]
        if reasons:
            raise InvalidInput(f"{path}: {unit} {number}: {reasons[0]}", field="messages")
        yield number, row["messages"]


def iter_preferences(path: Path, field: str = "training_data") -> Iterator[dict[str, list[dict[str, str]]]]:
    """Yield each preference row in TRL's conversational shape (`preference_row`); raise InvalidInput naming the
    first bad row and `field`."""
    path = Path(path)
    rows = 0
    for number, unit, row in _rows(path, ValidationReport(path=path), "dpo"):
        reasons = check_preference(row) if not isinstance(row, _Unparsed) else [row.reason]
        if reasons:
            raise InvalidInput(f"{path}: {unit} {number}: {reasons[0]}", field=field)
        rows += 1
        yield preference_row(row)
    if rows == 0:
        raise InvalidInput(f"{path} has no rows; it needs one JSON object with 'prompt', 'chosen' and 'rejected' per "
                           "line", field=field)


def _conversations(row: dict[str, list[dict[str, str]]]) -> list[list[dict[str, str]]]:
    """A preference row as the two conversations it compares: the prompt with each answer."""
    return [row["prompt"] + row["chosen"], row["prompt"] + row["rejected"]]


def preview_rows(
    path: Path, offset: int = 0, limit: int = 20, method: str = "sft"
) -> tuple[list[dict[str, Any]], int]:
    """Rows `offset` .. `offset + limit` as `{"line", "unit", "messages"}` (method dpo: `{"line", "unit", "prompt",
    "chosen", "rejected"}`, each a list of messages) or `{"line", "unit", "error"}`, and the number of rows in the
    file (blank JSONL lines are not rows)."""
    path = Path(path)
    check = row_check(method)
    shown: list[dict[str, Any]] = []
    total = 0
    for number, unit, row in _rows(path, ValidationReport(path=path), method):
        if offset <= total < offset + limit:
            reasons = check(row) if not isinstance(row, _Unparsed) else [row.reason]
            entry: dict[str, Any] = {"line": number, "unit": unit}
            if method == "dpo" and not reasons:
                entry |= preference_row(row)
            elif method == "sft" and isinstance(row, dict) and isinstance(row.get("messages"), list):
                entry["messages"] = row["messages"]
            if reasons:
                entry["error"] = "; ".join(reasons)
            shown.append(entry)
        total += 1
    return shown, total


class _Unparsed:
    """A row that could not be decoded at all."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _rows(path: Path, report: ValidationReport, method: str = "sft") -> Iterator[tuple[int, str, Any]]:
    if not path.exists():
        raise NotFound(f"{path}: no such file")
    if path.is_dir():
        raise InvalidInput(f"{path}: is a directory; give a .jsonl file (e.g. train_data.jsonl)")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _csv_rows(path, method)
    elif suffix == ".parquet":
        yield from _parquet_rows(path, method)
    elif suffix == ".json" and (items := _json_array(path)) is not None:
        for i, item in enumerate(items, start=1):
            yield i, "item", item
    else:
        yield from _jsonl_rows(path, report)


def _jsonl_rows(path: Path, report: ValidationReport) -> Iterator[tuple[int, str, Any]]:
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                report.blank_lines += 1
                continue
            try:
                yield number, "line", json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                yield number, "line", _Unparsed(f"not valid JSON ({exc.msg} at column {exc.colno})")
            except RecursionError:
                yield number, "line", _Unparsed("JSON nested too deeply to read")


def _json_array(path: Path) -> list[Any] | None:
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.lstrip().startswith("["):
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc
    except RecursionError:
        raise InvalidInput(f"{path}: JSON nested too deeply to read") from None
    return data if isinstance(data, list) else None


def _csv_rows(path: Path, method: str) -> Iterator[tuple[int, str, Any]]:
    with path.open("r", encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.DictReader(f)
        if method == "dpo":
            if reader.fieldnames is None or not set(PREFERENCE_KEYS) <= set(reader.fieldnames):
                raise InvalidInput(f"{path}: CSV needs 'prompt', 'chosen' and 'rejected' columns (text, or messages "
                                   "as JSON)")
        elif reader.fieldnames is None or "messages" not in reader.fieldnames:
            raise InvalidInput(f"{path}: CSV needs a 'messages' column holding each conversation as JSON")
        while True:
            number = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                return
            yield number, "line", _decode_fields(record, method)


def _parquet_rows(path: Path, method: str) -> Iterator[tuple[int, str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise InvalidInput(f"{path}: cannot read as parquet: {exc}") from exc
    for i, record in enumerate(table.to_pylist(), start=1):
        yield i, "row", _decode_fields(record, method)


def _decode_fields(record: dict[str, Any], method: str) -> Any:
    """CSV (and some parquet) files keep `messages` as a JSON string; a preference field is JSON when it holds a
    list of messages (it starts with '[') and plain text otherwise."""
    keys = ("messages",) if method == "sft" else PREFERENCE_KEYS
    for key in keys:
        value = record.get(key)
        if not isinstance(value, str) or (method == "dpo" and not value.lstrip().startswith("[")):
            continue
        try:
            record = {**record, key: json.loads(value)}
        except json.JSONDecodeError as exc:
            return _Unparsed(f"'{key}' is not valid JSON ({exc.msg} at column {exc.colno})")
        except RecursionError:
            return _Unparsed(f"'{key}' is JSON nested too deeply to read")
    return record


def _length(messages: list[dict[str, str]], tokenizer: Any) -> int:
    if tokenizer is None:
        return sum(len(m["content"]) for m in messages)
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


def _percentile(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile of an already sorted list."""
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", type(None): "null", bool: "boolean"}.get(
        type(value), type(value).__name__
    )
