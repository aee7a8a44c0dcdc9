import re

from promptflow import tool


@tool
def to_score(rating: str) -> float | None:
    """The first rating 1-5 in the judge's reply as a score in [0, 1] (1 -> 0.0, 5 -> 1.0); None when the reply
    holds no rating, which the evaluation counts as a failed judgement."""
    found = re.search(r"(?<![\d.])([1-5])(?!\d|\.\d)", rating or "")
    return (int(found.group(1)) - 1) / 4 if found else None
