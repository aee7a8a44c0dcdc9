"""Jinja2 templates of `llm` / `prompt` nodes and `.prompty` files, and Prompt flow's chat syntax.

A chat template is split into messages at lines holding only a role marker, `system:`,
`user:`, `assistant:` (also `# system:` and any case); text before the first marker, or a
template with none, is one user message. Templates compile once per file and mtime.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta

from forgeflow.errors import InvalidInput, NotFound

ROLES = ("system", "user", "assistant", "function", "tool")
_MARKER = re.compile(r"^\s*#?\s*(system|user|assistant|function|tool)\s*:\s*$", re.IGNORECASE | re.MULTILINE)
_env = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True, autoescape=False)
_cache: dict[str, tuple[int, jinja2.Template, frozenset[str]]] = {}
_lock = threading.Lock()


def compile_text(text: str, where: str) -> tuple[jinja2.Template, frozenset[str]]:
    """The compiled template and the names it reads from its context."""
    try:
        parsed = _env.parse(text)
        return _env.from_string(parsed), frozenset(meta.find_undeclared_variables(parsed))
    except jinja2.TemplateSyntaxError as exc:
        raise InvalidInput(f"{where}: template syntax error on line {exc.lineno}: {exc.message}", field=where) from None


def load_template(path: Path, where: str) -> tuple[jinja2.Template, frozenset[str]]:
    """Compile a template file, cached by path and mtime."""
    key = str(path)
    try:
        mtime = os.stat(key).st_mtime_ns
    except OSError:
        raise NotFound(f"{where}: template file {path} not found", field=where) from None
    hit = _cache.get(key)
    if hit is not None and hit[0] == mtime:
        return hit[1], hit[2]
    template, names = compile_text(path.read_text(encoding="utf-8"), f"{where} ({path.name})")
    with _lock:
        _cache[key] = (mtime, template, names)
    return template, names


def check_variables(names: frozenset[str], given: set[str], where: str, field: str) -> None:
    """Fail naming the first template variable that no input provides."""
    missing = sorted(names - given)
    if missing:
        raise InvalidInput(
            f"{where}: the template uses {{{{ {missing[0]} }}}} but no input {missing[0]!r} is given "
            f"(inputs: {', '.join(sorted(given)) or 'none'})",
            field=f"{field}.{missing[0]}",
        )


def render(template: jinja2.Template, variables: dict[str, Any], where: str) -> str:
    try:
        return template.render(**variables)
    except jinja2.TemplateError as exc:
        raise InvalidInput(f"{where}: rendering the template failed: {exc}", field=where) from exc


def to_messages(text: str) -> list[dict[str, str]]:
    """Split rendered chat-template text into [{"role", "content"}] at role-marker lines."""
    parts = _MARKER.split(text)
    messages = []
    head = parts[0].strip()
    if head:
        messages.append({"role": "user", "content": head})
    for i in range(1, len(parts), 2):
        content = parts[i + 1].strip() if i + 1 < len(parts) else ""
        role = parts[i].lower()
        if content or role == "assistant":
            messages.append({"role": role, "content": content})
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()  # a trailing empty `assistant:` only invites the answer
    return messages
