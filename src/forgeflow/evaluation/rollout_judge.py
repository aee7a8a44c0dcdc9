"""A rollout's judge: the answers the gateway sampled from each side in a step (serving/samples.py), scored by a
Prompt-flow-style judge flow (evaluation/judge.py; the shipped flows/examples/judge-answer by default, or
--judge-flow, over --judge-connection or the flow's own connection). A side's figure is the mean score of its
answers the judge could score. It runs on the leader's rollout thread, never on the event loop.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from forgeflow.errors import ForgeflowError, InvalidInput
from forgeflow.evaluation.rollout_plan import RolloutSpec

log = logging.getLogger("forgeflow.rollout")


def check_judge(flow: str | None, connection: str | None) -> None:
    """The judge flow loads and its connection exists, before a rollout that needs them starts (400 naming
    judge_flow or judge_connection)."""
    from forgeflow.evaluation.judge import DEFAULT_JUDGE_FLOW, judge_flow
    from forgeflow.store.connections import local_connection_lookup

    folder = Path(flow) if flow else DEFAULT_JUDGE_FLOW
    if not (folder / "flow.dag.yaml").is_file():
        raise InvalidInput(f"judge_flow {str(folder)!r} is no flow folder (it has no flow.dag.yaml) on the server: "
                           "give a judge flow's folder, or leave it out for the shipped judge", field="judge_flow")
    try:
        judge_flow(folder, connection)
    except ForgeflowError as e:
        field = e.field if e.field in ("judge_flow", "judge_connection") else "judge_flow"
        raise InvalidInput(e.message if field in e.message else f"{field}: {e.message}", field=field) from None
    if connection is not None:
        try:
            local_connection_lookup()(connection)
        except ForgeflowError as e:
            raise InvalidInput(f"judge_connection: {e.message}", field="judge_connection") from None


def judge_sides(spec: RolloutSpec, items: dict[str, list[dict[str, Any]]]) -> dict[str, float | None]:
    """Each side's mean judge score of its sampled answers (None: none sampled, or none the judge scored)."""
    from forgeflow.evaluation.judge import DEFAULT_JUDGE_FLOW, judge_answers

    folder = Path(spec.judge_flow) if spec.judge_flow else DEFAULT_JUDGE_FLOW
    scores: dict[str, float | None] = {}
    for name, sampled in items.items():
        rows = [{"question": _question(s["messages"]), "answer": s["answer"], "reference": None} for s in sampled]
        try:
            got = [v for v in judge_answers(folder, rows, connection=spec.judge_connection) if v is not None]
        except ForgeflowError as e:  # the judge's connection went away: the side counts as unknown
            log.warning("the rollout's judge failed: %s", e.message)
            got = []
        scores[name] = sum(got) / len(got) if got else None
    return scores


def _question(messages: list[dict[str, Any]]) -> str:
    """What was asked: the conversation's last user turn."""
    for message in reversed(messages or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else str(content)
    return ""
