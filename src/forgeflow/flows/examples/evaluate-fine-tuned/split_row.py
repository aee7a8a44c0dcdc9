from promptflow import tool


@tool
def split_row(messages: list) -> dict:
    """The last user turn is the question, the assistant turn after it the expected answer."""
    question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    expected = next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), "")
    return {"question": question, "expected": expected}
