"""LLM-as-judge: score answers with a Prompt-flow-style evaluation flow.

A judge flow takes the inputs `question`, `answer` and `reference` (those it declares; any other input needs a
default) and has an output `score`, a number in [0, 1]. It runs once per answer through the flow engine that
`flow test` and batch runs use, with connections from the workspace's connection store: a connection named for
the judge replaces those of the flow's llm nodes, else each node uses its own (a flow with no llm node, e.g. python
only or flex, needs none). The default flow, flows/examples/judge-answer, asks a model over the connection
`forgeflow-judge` (or the one named) to rate the answer against the reference from 1 to 5.
A row whose flow run fails or whose score is not a number in [0, 1] scores None: counted, never fatal.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from forgeflow.errors import ForgeflowError, InvalidInput
from forgeflow.flows.contract import ConnectionProvider, Flow, FlowKind
from forgeflow.flows.examples import HERE as EXAMPLES

log = logging.getLogger("forgeflow.judge")
DEFAULT_JUDGE_FLOW = EXAMPLES / "judge-answer"
JUDGE_INPUTS = ("question", "answer", "reference")


def judge_flow(flow_dir: Path | str, connection: str | None = None) -> Flow:
    """The judge flow, checked (an output `score`, no input it cannot be given), its llm nodes on `connection`
    when one is named."""
    from forgeflow.flows.loader import load_flow

    flow = load_flow(Path(flow_dir))
    if "score" not in flow.outputs:
        raise InvalidInput(f"judge flow {flow_dir}: it has no output 'score' (outputs: "
                           f"{', '.join(flow.outputs) or 'none'}); a judge flow outputs a score in [0, 1]",
                           field="judge_flow")
    unfed = [n for n, spec in flow.inputs.items() if n not in JUDGE_INPUTS and spec.required]
    if unfed:
        raise InvalidInput(f"judge flow {flow_dir}: input {unfed[0]!r} has no default, and a judge is given only "
                           f"{', '.join(JUDGE_INPUTS)}: give it a default", field="judge_flow")
    if connection is None:
        return flow
    llm = [n for n in flow.nodes.values() if n.type == "llm"]
    if flow.kind != FlowKind.DAG or not llm:
        raise InvalidInput(f"judge_connection {connection!r}: the judge flow {flow_dir} has no llm node whose "
                           "connection it could replace; name the connection in the flow instead",
                           field="judge_connection")
    nodes = {name: dataclasses.replace(node, connection=connection) if node.type == "llm" else node
             for name, node in flow.nodes.items()}
    return dataclasses.replace(flow, nodes=nodes)


def judge_answers(flow_dir: Path, items: list[dict], *, connection: str | None = None,
                  connection_provider: ConnectionProvider | None = None, workers: int = 4) -> list[float | None]:
    """The judge's score in [0, 1] for each item ({"question", "answer", "reference" (may be None)}), None for an
    item the flow failed on or scored outside [0, 1]. `connection` replaces the connection of the flow's llm nodes
    (any stored connection as the judge); connections come from `connection_provider`, by default the workspace's
    store. A flow that is not a judge flow, or a connection that does not exist, raises before any item runs."""
    from forgeflow.store.connections import local_connection_lookup

    flow = judge_flow(flow_dir, connection)
    provider = connection_provider or local_connection_lookup()
    for name in dict.fromkeys(n.connection for n in flow.nodes.values() if n.type == "llm" and n.connection):
        provider(name)  # a missing connection is the caller's error, not every row's
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items))), thread_name_prefix="judge") as pool:
        return list(pool.map(lambda i: _judge_one(flow, items[i], provider, i), range(len(items))))


def _judge_one(flow: Flow, item: dict, provider: ConnectionProvider, index: int) -> float | None:
    from forgeflow.flows.executor import run_flow

    inputs: dict[str, Any] = {}
    for name in JUDGE_INPUTS:
        if name not in flow.inputs:
            continue
        value = item.get(name)
        if value is None and flow.inputs[name].has_default:
            continue
        inputs[name] = "" if value is None else value
    try:
        score = run_flow(flow, inputs, connection_provider=provider).outputs.get("score")
    except ForgeflowError as exc:
        log.warning("judge flow failed on %s: %s", _which(index, item), exc.message)
        return None
    except Exception as exc:  # the flow's own code: one row's failure, reported and counted
        log.warning("judge flow failed on %s: %s: %s", _which(index, item), type(exc).__name__, exc)
        return None
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score) \
            or not 0.0 <= score <= 1.0:
        log.warning("judge flow scored %r on %s: not a number in [0, 1]", score, _which(index, item))
        return None
    return float(score)


def _which(index: int, item: dict) -> str:
    """The item by its place (and its data file's line, when it has one), never by its text: the questions and
    answers are the users' (a rollout's are sampled from live traffic)."""
    line = item.get("line")
    return f"item {index + 1}" + (f" (line {line})" if isinstance(line, int) else "")
