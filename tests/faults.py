"""Faults injected into a real part for the tests of what follows them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def first_call_fails(real: Callable[..., Any], failure: Callable[..., Any]) -> Callable[..., Any]:
    """`real`, except that its first call is answered by `failure` (which may raise): a fault that happens once."""
    calls: list[tuple] = []

    def call(*args: Any) -> Any:
        if not calls:
            calls.append(args)
            return failure(*args)
        return real(*args)

    return call


def raises(message: str) -> Callable[..., Any]:
    """A failure that raises RuntimeError(message), whatever it is called with."""

    def fail(*args: Any) -> Any:
        raise RuntimeError(message)

    return fail
