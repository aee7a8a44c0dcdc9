"""An evaluation's result from its finished rows: result.json (the shape `EvaluationSpec` documents, what
`model evaluate --json` prints) and the short summary a registered model version keeps in its TAG_EVALUATION tag."""

from __future__ import annotations

from typing import Any

from forgeflow.evaluation.metrics import compare, row_change, summarize
from forgeflow.evaluation.scoring import Row
from forgeflow.training.jobs import EvaluationSpec

ROW_KEYS = ("answer", "loss", "loss_tokens", "exact_match", "f1", "rouge_l", "judge", "prompt_truncated")


def _side_metrics(spec: EvaluationSpec, entries: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in spec.metrics:
        weights = [e.get("loss_tokens") or 0 for e in entries] if name == "loss" else None
        out |= summarize([e.get(name) for e in entries], name=name, weights=weights, confidence=spec.confidence,
                         seed=spec.seed)
    # rows whose prompt lost its start to fit the model's context: their scores are on less than the whole prompt
    return out | {"rows": len(entries), "truncated_prompts": sum(1 for e in entries if e.get("prompt_truncated"))}


def build_result(spec: EvaluationSpec, rows: list[Row], done: dict[tuple[str, int], dict[str, Any]]) -> dict:
    """result.json: both sides' aggregates with intervals, the comparison per metric and every row."""
    sides = {"model": spec.model} | ({"baseline": spec.baseline} if spec.baseline is not None else {})
    entries = {side: [done[(side, i)] for i in range(len(rows))] for side in sides}
    result: dict[str, Any] = {"job": spec.job_id, "data": spec.data, "model": None, "baseline": None,
                              "comparison": None}
    for side, model in sides.items():
        result[side] = {"ref": model.ref, "metrics": _side_metrics(spec, entries[side])}
    if spec.baseline is not None:
        mine, theirs = entries["model"], entries["baseline"]
        result["comparison"] = {}
        for name in spec.metrics:
            weights = None
            if name == "loss":
                weights = ([e.get("loss_tokens") or 0 for e in mine], [e.get("loss_tokens") or 0 for e in theirs])
            result["comparison"][name] = compare([e.get(name) for e in mine], [e.get(name) for e in theirs],
                                                 name=name, weights=weights, confidence=spec.confidence,
                                                 seed=spec.seed)
    result["rows"] = []
    for i, row in enumerate(rows):
        out: dict[str, Any] = {"line": row.line, "question": row.question, "reference": row.reference}
        for side in sides:
            out[side] = _row_side(entries[side][i])
        out.setdefault("baseline", None)
        out["change"] = row_change(out["model"], out["baseline"], spec.metrics) if out["baseline"] else None
        result["rows"].append(out)
    return result


def _row_side(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: entry[k] for k in ROW_KEYS if k in entry}


def registry_summary(result: dict[str, Any], *, finished_at: str, mlflow_run_id: str | None = None) -> dict[str, Any]:
    """What a model version keeps of its newest evaluation: the aggregates and the comparison, rounded, no rows,
    and the MLflow run holding its metrics and result.json."""
    def side(part: dict[str, Any] | None) -> dict[str, Any] | None:
        return {"ref": part["ref"], "metrics": _rounded(part["metrics"])} if part else None

    return {
        "job": result["job"], "data": result["data"], "finished_at": finished_at, "mlflow_run_id": mlflow_run_id,
        "baseline": (result.get("baseline") or {}).get("ref"),
        "model_metrics": side(result["model"])["metrics"],  # type: ignore[index]
        "baseline_metrics": (side(result.get("baseline")) or {}).get("metrics"),
        "comparison": _rounded(result.get("comparison")),
    }


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value
