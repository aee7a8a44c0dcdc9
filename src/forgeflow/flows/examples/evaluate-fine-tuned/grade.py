import re

from promptflow import tool

_STOP = {"the", "a", "an", "it", "its", "is", "are", "was", "in", "of", "and", "to", "on", "by", "at", "for", "from"}


def key_facts(expected: str, question: str) -> set[str]:
    """Numbers and names in the expected answer that the question does not already give away."""
    asked = {w.lower() for w in re.findall(r"[\w'-]+", question)}
    words = re.findall(r"\b(?:\d[\d.,]*|[A-Z][\w'-]+)", expected)
    facts = {w.strip(".,").lower() for w in words} - asked - _STOP
    return {f for f in facts if f}


def contains_fact(answer: str, expected: str, question: str) -> bool:
    facts = key_facts(expected, question)
    text = (answer or "").lower()
    if not facts:  # nothing distinctive: fall back to word overlap
        want = {w.lower() for w in re.findall(r"\w+", expected)} - _STOP
        got = {w.lower() for w in re.findall(r"\w+", text)}
        return bool(want) and len(want & got) / len(want) >= 0.6
    return all(f in text for f in facts)


@tool
def grade(expected: str, question: str, fine_tuned: str, base: str) -> dict:
    return {"fine_tuned": contains_fact(fine_tuned, expected, question),
            "base": contains_fact(base, expected, question)}
