"""The answer a reply carries: its "answer" field when the reply is JSON (the json_reply variant asks for it)."""

import json

from promptflow.core import tool


@tool
def pick_answer(reply: str) -> str:
    try:
        parsed = json.loads(reply)
    except ValueError:
        return reply.strip()
    if isinstance(parsed, dict) and "answer" in parsed:
        return str(parsed["answer"])
    return reply.strip()
