"""Run `prompt` nodes (render a template to text) and `llm` nodes (render, then a chat call)."""

from __future__ import annotations

from typing import Any

from forgeflow.flows.contract import ConnectionProvider
from forgeflow.flows.nodes import llm, templates
from forgeflow.flows.nodes.python import fetch_connection


def run_prompt(node: Any, kwargs: dict[str, Any]) -> str:
    where = f"node {node.name!r}"
    template, names = templates.load_template(node.path, where)
    templates.check_variables(names, set(kwargs), where, f"{node.name}.inputs")
    return templates.render(template, kwargs, where)


def run_llm(node: Any, kwargs: dict[str, Any], provider: ConnectionProvider | None, *, stream: bool) -> Any:
    """The answer text, or an iterator of chunks when streaming was asked for."""
    where = f"node {node.name!r}"
    params, settings, variables = llm.split_inputs(kwargs, f"{node.name}.inputs")
    template, names = templates.load_template(node.path, where)
    templates.check_variables(names, set(variables), where, f"{node.name}.inputs")
    messages = templates.to_messages(templates.render(template, variables, where))
    conn = fetch_connection(node.connection, provider, where, f"{node.name}.connection")
    return llm.chat(conn, messages, params, settings, stream=stream or bool(settings.get("stream")), where=where,
                    at=f"{node.name}.inputs")
