from promptflow.core import tool


@tool
def grade(answer: str, place: str) -> dict:
    return {"named": place.lower() in answer.lower(), "json": "JSON" in answer, "length": len(answer)}
