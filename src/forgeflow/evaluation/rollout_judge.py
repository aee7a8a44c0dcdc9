"""A rollout's judge: the answers the gateway sampled from each side in a step (serving/samples.py), scored by a
Prompt-flow-style judge flow (evaluation/judge.py; the shipped flows/examples/judge-answer by default, or
--judge-flow, over --judge-connection or the flow's own connection). A side's figure is the mean score of its
answers the judge could score. A judge that cannot score at all (its connection down, its flow gone, every answer
of a side failing) raises UpstreamError: the controller ends the rollout as Failed rather than reading it as a
breach. It runs on a thread of its own, started by the leader's controller with a deadline, never on the event loop.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from forgeflow.errors import ForgeflowError, InvalidInput, UpstreamError
from forgeflow.evaluation.rollout_plan import RolloutSpec
from forgeflow.names import client_path

log = logging.getLogger("forgeflow.rollout")

# How long one step's judging may take before the rollout ends as Failed (the judge could not score).
JUDGE_TIMEOUT_S = float(os.environ.get("FORGEFLOW_ROLLOUT_JUDGE_TIMEOUT_S", "600"))
# Scores the sampled answers of each side: deployment -> [{"messages", "answer"}] -> deployment -> mean in [0, 1].
Judge = Callable[[RolloutSpec, dict[str, list[dict]]], dict[str, float | None]]


class JudgeRun:
    """One step's judging on a daemon thread of its own, so the controller's loop goes on meanwhile (a cancel, the
    other rollouts); a run past its deadline is given up on (its thread ends whenever the judge returns)."""

    def __init__(self, judge: Judge, spec: RolloutSpec, items: dict[str, list[dict]], timeout_s: float) -> None:
        self.items = items
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.scores: dict[str, float | None] | None = None
        self.error: str | None = None  # why the judge could not score
        self._done = threading.Event()
        threading.Thread(target=self._run, args=(judge, spec), name="forgeflow-rollout-judge", daemon=True).start()

    def _run(self, judge: Judge, spec: RolloutSpec) -> None:
        try:
            self.scores = judge(spec, self.items)
        except ForgeflowError as e:
            self.error = e.message
        except Exception as e:  # the judge's own bug: the rollout cannot be judged
            log.exception("the rollout's judge failed")
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def late(self) -> bool:
        return not self.done() and time.monotonic() > self.deadline


def check_judge(flow: str | None, connection: str | None) -> None:
    """The judge flow loads and its connection exists, before a rollout that needs them starts (400 naming
    judge_flow or judge_connection)."""
    from forgeflow.evaluation.judge import DEFAULT_JUDGE_FLOW, judge_flow
    from forgeflow.store.connections import local_connection_lookup

    folder = client_path(flow, "judge_flow") if flow else DEFAULT_JUDGE_FLOW
    try:
        is_flow = (folder / "flow.dag.yaml").is_file()
    except OSError as e:  # the folder's own name is fine but flow.dag.yaml beside it is past the limit
        raise InvalidInput(f"judge_flow {str(folder)[:100]!r} is no folder path on the server: {e}"[:300],
                           field="judge_flow") from None
    if not is_flow:
        raise InvalidInput(f"judge_flow {str(folder)!r} is no flow folder (it has no flow.dag.yaml) on the server: "
                           "give a judge flow's folder, or leave it out for the shipped judge", field="judge_flow")
    try:
        judge_flow(folder, connection)
    except (OSError, ValueError) as e:
        raise InvalidInput(f"judge_flow {str(folder)[:100]!r} does not load: {e}"[:300], field="judge_flow") from None
    except ForgeflowError as e:
        field = e.field if e.field in ("judge_flow", "judge_connection") else "judge_flow"
        raise InvalidInput(e.message if field in e.message else f"{field}: {e.message}", field=field) from None
    if connection is not None:
        try:
            local_connection_lookup()(connection)
        except ForgeflowError as e:
            raise InvalidInput(f"judge_connection: {e.message}", field="judge_connection") from None


def judge_sides(spec: RolloutSpec, items: dict[str, list[dict[str, Any]]]) -> dict[str, float | None]:
    """Each side's mean judge score of its sampled answers (None: none sampled); UpstreamError when the judge cannot
    score (it could not run, or scored none of a side's answers)."""
    from forgeflow.evaluation.judge import DEFAULT_JUDGE_FLOW, judge_answers

    folder = Path(spec.judge_flow) if spec.judge_flow else DEFAULT_JUDGE_FLOW
    scores: dict[str, float | None] = {}
    for name, sampled in items.items():
        rows = [{"question": _question(s["messages"]), "answer": s["answer"], "reference": None} for s in sampled]
        try:
            got = [v for v in judge_answers(folder, rows, connection=spec.judge_connection) if v is not None]
        except ForgeflowError as e:  # the judge's connection or flow went away
            raise UpstreamError(e.message) from e
        except (OSError, ValueError) as e:  # the flow's folder went away or became unreadable
            raise UpstreamError(f"judge flow {folder}: {type(e).__name__}: {e}") from e
        if rows and not got:
            raise UpstreamError(f"it scored none of the {len(rows)} sampled answers of {name} (see the server's log "
                                "for why, by item)")
        scores[name] = sum(got) / len(got) if got else None
    return scores


def _question(messages: list[dict[str, Any]]) -> str:
    """What was asked: the conversation's last user turn."""
    for message in reversed(messages or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else str(content)
    return ""
