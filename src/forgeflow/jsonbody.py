"""JSON request bodies, read one strict way at every hop that parses one (the gateway, a model instance, a flow
instance): JSON has no NaN or infinities, so the `NaN` / `Infinity` literals Python's parser accepts, and numbers too
large for a float (`1e999`), are refused with a 400 instead of travelling on until an answer cannot be sent. So is a
string holding an unpaired UTF-16 surrogate (`"\\ud800"`, which JSON's escapes can write): it is no Unicode text, so
no error message quoting it, no answer echoing it and no tokenizer could take it.
Nesting is bounded before any parser sees the body (api/guard.py, which reads it as UTF-8): a body in UTF-16 or
UTF-32, which Python's parser would also read, is refused, as JSON between machines is UTF-8 (RFC 8259).
"""

from __future__ import annotations

import json
import math
from typing import Any

from forgeflow.errors import InvalidInput


def _no_constant(name: str) -> Any:
    raise InvalidInput(f"the body holds {name}, which is not a JSON number: send a finite number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidInput(f"the body holds the number {text[:40]}, too large to be a finite 64-bit float")
    return value


def loads(raw: bytes | str, *, what: str = "the request body") -> Any:
    """Parse a JSON body, or raise InvalidInput saying why (not JSON, NaN/Infinity, an overflowing number, a
    string that is not valid Unicode, bytes in UTF-16 or UTF-32)."""
    if isinstance(raw, (bytes, bytearray)) and json.detect_encoding(raw) not in ("utf-8", "utf-8-sig"):
        raise InvalidInput(f"{what} is not UTF-8 (it reads as {json.detect_encoding(raw).upper()}): send JSON "
                           "encoded as UTF-8")
    try:
        value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"{what} is not valid JSON: {str(exc)[:200]}") from None
    if _may_hold_surrogates(raw):
        _refuse_surrogates(value, what)
    return value


def _may_hold_surrogates(raw: bytes | str) -> bool:
    """Whether parsing could have made a lone surrogate: only a `\\u` escape or text that is not strict UTF-8
    (the parser decodes bytes with surrogatepass) can."""
    if isinstance(raw, str):
        return "\\u" in raw or not _encodes(raw)
    if b"\\u" in raw:
        return True
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _refuse_surrogates(value: Any, what: str) -> None:
    """Walk the parsed body (iteratively: it is as deep as the parser allowed) and refuse the first string, key
    or value, that is not valid Unicode, naming where it is."""
    todo: list[tuple[Any, str]] = [(value, "")]
    while todo:
        item, path = todo.pop()
        if isinstance(item, str):
            if not _encodes(item):
                _refuse(path, what)
        elif isinstance(item, dict):
            for key, inner in item.items():
                if not _encodes(key):
                    _refuse(path, what, key=True)
                todo.append((inner, f"{path}.{key}" if path else key))
        elif isinstance(item, list):
            todo.extend((inner, f"{path}[{index}]") for index, inner in enumerate(item))


def _refuse(path: str, what: str, *, key: bool = False) -> None:
    where = f"a key of {path or 'the body'}" if key else (path or what)
    raise InvalidInput(f"{where} holds an unpaired UTF-16 surrogate (such as \\ud800), which is not valid Unicode: "
                       "send valid Unicode (UTF-8) text", field=path or None)
