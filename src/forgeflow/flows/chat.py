"""Chat with a chat flow: streamed answers, and a history that holds the answers as text.

Prompt flow stores a streamed answer in `chat_history` as `<TracedIterator ...>`; here every
streamed output is drained while it is shown and the joined text is what the history keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from forgeflow.errors import ForgeflowError, InvalidInput
from forgeflow.flows.contract import ConnectionProvider, chat_history_name, chat_input_name, chat_output_name
from forgeflow.flows.executor import run_flow
from forgeflow.flows.loader import load_flow

EXIT_WORDS = ("exit", "quit")


def is_stream(value: Any) -> bool:
    """A streaming output: an iterator/generator, not a plain value."""
    return isinstance(value, Iterator) and not isinstance(value, (str, bytes, dict, list, tuple))


def drain(outputs: dict, on_chunk: Callable[[str, str], None] | None = None) -> dict:
    """Outputs with every stream joined into text; `on_chunk(name, chunk)` sees chunks as they come."""
    out = {}
    for name, value in outputs.items():
        if is_stream(value):
            parts = []
            for chunk in value:
                chunk = "" if chunk is None else str(chunk)
                parts.append(chunk)
                if on_chunk:
                    on_chunk(name, chunk)
            out[name] = "".join(parts)
        else:
            out[name] = value
    return out


class ChatSession:
    """One conversation with a chat flow (a node variant in place of its default when `variant` names one);
    `history` is Prompt flow's `[{"inputs", "outputs"}]`."""

    def __init__(self, flow_dir: Path, *, connection_provider: ConnectionProvider | None = None,
                 inputs: dict | None = None, variant: str | None = None) -> None:
        self.flow_dir = Path(flow_dir)
        self.variant = variant
        flow = load_flow(self.flow_dir, variant)
        self.input_name = chat_input_name(flow)
        self.output_name = chat_output_name(flow)
        self.history_name = chat_history_name(flow)
        if not self.input_name or not self.output_name:
            raise InvalidInput(f"{flow.path.name} is not a chat flow: mark one input `is_chat_input: true` and "
                               "one output `is_chat_output: true`", field="flow")
        self.provider = connection_provider
        self.extra = dict(inputs or {})
        self.history: list[dict] = []

    def ask(self, text: str, on_chunk: Callable[[str], None] | None = None) -> dict:
        """Run one turn; the chat output's chunks go to `on_chunk`; returns the (text) outputs."""
        inputs = {**self.extra, self.input_name: text}
        if self.history_name:
            inputs[self.history_name] = [dict(turn) for turn in self.history]
        result = run_flow(self.flow_dir, inputs, connection_provider=self.provider, stream=True, variant=self.variant)
        shown = []

        def chunk(name: str, part: str) -> None:
            if name == self.output_name and on_chunk:
                shown.append(part)
                on_chunk(part)

        outputs = drain(result.outputs, chunk)
        if not shown and on_chunk:
            answer = outputs.get(self.output_name)
            on_chunk(answer if isinstance(answer, str) else str(answer))
        turn_inputs = {k: v for k, v in (result.inputs or inputs).items() if k != self.history_name}
        self.history.append({"inputs": turn_inputs, "outputs": outputs})
        return outputs


def chat_loop(session: ChatSession, read: Callable[[str], str], write: Callable[[str], None],
              error: Callable[[str], None]) -> int:
    """Read lines until `exit` / end of input; returns the number of turns answered."""
    turns = 0
    while True:
        try:
            text = read("User: ")
        except EOFError:
            write("\n")
            return turns
        if text.strip().lower() in EXIT_WORDS:
            return turns
        if not text.strip():
            continue
        write("Bot: ")
        try:
            session.ask(text, on_chunk=write)
            turns += 1
        except ForgeflowError as exc:
            error(exc.message)
        write("\n")
