"""What a flow run returns: `FlowResult`, its `RunStatus`, and `StreamingOutput` for outputs still being produced."""

from __future__ import annotations

import json
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class RunStatus(StrEnum):
    """Status of a flow run, a node in it, a batch run and each of its lines (Prompt flow's names)."""

    NOT_STARTED = "NotStarted"
    RUNNING = "Running"
    COMPLETED = "Completed"
    COMPLETED_WITH_ERRORS = "CompletedWithErrors"  # a batch run some of whose lines failed
    FAILED = "Failed"
    CANCELED = "Canceled"
    BYPASSED = "Bypassed"  # a node skipped by `activate`, or whose upstream nodes all were


class StreamingOutput(Iterator[str]):
    """An output that streams: iterate for its str chunks; `.text` is what has come so far.

    `on_done(text)` runs once the source is exhausted (the engine uses it to record the full text
    in the node's result, so chat history and run details keep real text).
    """

    def __init__(self, source: Iterator[Any], on_done: Callable[[str], None] | None = None) -> None:
        self._source = iter(source)
        self._chunks: list[str] = []
        self._on_done = on_done
        self.done = False

    def __iter__(self) -> StreamingOutput:
        return self

    def __next__(self) -> str:
        if self.done:
            raise StopIteration
        try:
            chunk = next(self._source)
        except StopIteration:
            self._finish()
            raise
        chunk = chunk if isinstance(chunk, str) else str(chunk)
        self._chunks.append(chunk)
        return chunk

    def _finish(self) -> None:
        self.done = True
        if self._on_done is not None:
            self._on_done(self.text)

    @property
    def text(self) -> str:
        return "".join(self._chunks)

    def read(self) -> str:
        """Consume the rest and return the whole text."""
        for _ in self:
            pass
        return self.text

    def __repr__(self) -> str:
        return f"StreamingOutput(done={self.done}, text={self.text[:60]!r})"


def settle(value: Any, keep_stream: bool, on_done: Callable[[str], None] | None = None) -> Any:
    """Join a generator/iterator output (str chunks -> str), or keep it as a StreamingOutput."""
    if value is None or isinstance(value, (str, bytes, dict, list, tuple, StreamingOutput)):
        return value
    if isinstance(value, (types.GeneratorType, Iterator)):
        if keep_stream:
            return StreamingOutput(value, on_done)
        items = list(value)
        return "".join(items) if all(isinstance(i, str) for i in items) else items
    return value


def jsonable(value: Any) -> Any:
    """A JSON-safe copy: streams become their text so far, unknown objects their repr."""

    def default(obj: Any) -> Any:
        if isinstance(obj, StreamingOutput):
            return obj.text
        return repr(obj)

    return json.loads(json.dumps(value, default=default))


@dataclass
class FlowResult:
    """Outcome of one flow run (or one single-node run, or an aggregation)."""

    outputs: dict[str, Any]
    node_results: dict[str, dict[str, Any]]
    duration_s: float
    inputs: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    status: RunStatus = RunStatus.COMPLETED
    node: str | None = None
    variant: str | None = None  # the `${node.variant_id}` run in place of a node's default

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (what `write_details` stores and `run_aggregation` accepts back)."""
        return jsonable(
            {
                "outputs": self.outputs,
                "node_results": self.node_results,
                "duration_s": self.duration_s,
                "inputs": self.inputs,
                "metrics": self.metrics,
                "status": self.status,
                "node": self.node,
                "variant": self.variant,
            }
        )
