"""JSON request bodies, read one strict way at every hop that parses one (the gateway, a model instance, a flow
instance): JSON has no NaN or infinities, so the `NaN` / `Infinity` literals Python's parser accepts, and numbers too
large for a float (`1e999`), are refused with a 400 instead of travelling on until an answer cannot be sent.
Nesting is bounded before any parser sees the body (api/guard.py).
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
    """Parse a JSON body, or raise InvalidInput saying why (not JSON, NaN/Infinity, an overflowing number)."""
    try:
        return json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"{what} is not valid JSON: {str(exc)[:200]}") from None
