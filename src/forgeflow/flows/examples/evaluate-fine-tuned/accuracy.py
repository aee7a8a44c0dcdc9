from promptflow import log_metric, tool


@tool
def accuracy(grades: list) -> dict:
    """Share of lines each model answered with the expected fact (aggregation: runs once per batch)."""
    grades = [g for g in grades if g]
    result = {}
    for model in ("fine_tuned", "base"):
        value = round(sum(bool(g[model]) for g in grades) / len(grades), 4) if grades else 0.0
        log_metric(f"{model}_accuracy", value)
        result[f"{model}_accuracy"] = value
    log_metric("lines", len(grades))
    result["lines"] = len(grades)
    return result
