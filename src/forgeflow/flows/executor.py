"""Run a flow: a DAG's nodes run here (independent ones concurrently), then its aggregation nodes;
flex and prompty flows are run by their own modules.

`run_flow` is safe to call from many threads at once (batch runs, `flow serve`): flows and tool
modules are cached (see loader.load_flow and nodes.python), imports are serialised, and each run keeps
its own state. Node fields beyond Prompt flow's: `timeout` (seconds for one attempt), `retries`
(extra attempts after a failure of the tool or a timeout) and `retry_delay` (seconds before the
first retry, doubling after each).
"""

from __future__ import annotations

import contextvars
import itertools
import json
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from forgeflow.errors import ForgeflowError, InvalidInput, NotFound, UpstreamError
from forgeflow.flows import compat, flex, prompty
from forgeflow.flows.contract import (ConnectionProvider, Flow, FlowKind, Node, Reference, coerce_value, resolve_inputs,
                                      variant_label)
from forgeflow.flows.loader import load_flow
from forgeflow.flows.nodes.prompt import run_llm, run_prompt
from forgeflow.flows.nodes.python import call_tool, load_tool
from forgeflow.flows.nodes.requirements import check_requirements, environment_variables
from forgeflow.flows.result import FlowResult, RunStatus, StreamingOutput, jsonable, settle

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="forgeflow-node")
    return _pool


def select(value: Any, ref: Reference, where: str) -> Any:
    """Follow `${node.output.a.b}`'s fields into a node's output."""
    for key in ref.fields:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, (list, tuple)) and key.lstrip("-").isdigit() and -len(value) <= int(key) < len(value):
            value = value[int(key)]
        elif value is not None and not isinstance(value, (dict, list, tuple)) and hasattr(value, key):
            value = getattr(value, key)
        else:
            raise InvalidInput(f"{where}: {ref} has no field {key!r} in {value!r:.200}", field=where)
    return value


def _attempts(node: Node, call: Callable[[], Any]) -> Any:
    """Run `call` with the node's timeout, retrying tool failures and timeouts `retries` times."""
    for attempt in range(node.retries + 1):
        try:
            return _with_timeout(node, call)
        except UpstreamError:
            if attempt >= node.retries:
                raise
            time.sleep(node.retry_delay * 2**attempt)
    raise AssertionError("unreachable")


def _with_timeout(node: Node, call: Callable[[], Any]) -> Any:
    if not node.timeout:
        return call()
    box: dict[str, Any] = {}
    done = threading.Event()
    ctx = contextvars.copy_context()

    def target() -> None:
        try:
            box["value"] = ctx.run(call)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = exc
        finally:
            done.set()

    # A daemon thread: Python cannot kill a stuck tool, so it is left behind, not waited for.
    threading.Thread(target=target, name=f"forgeflow-node-{node.name}", daemon=True).start()
    if not done.wait(node.timeout):
        raise UpstreamError(f"node {node.name!r} timed out after {node.timeout:g}s", field=f"{node.name}.timeout")
    if "error" in box:
        raise box["error"]
    return box["value"]


class _Run:
    """The state of one line (or one aggregation) while its nodes run."""

    def __init__(self, flow: Flow, result: FlowResult, provider: ConnectionProvider | None, stream: bool,
                 value_of: Callable[[_Run, Reference, str], Any], single: bool = False) -> None:
        self.flow, self.result, self.provider, self.stream = flow, result, provider, stream
        self.outputs: dict[str, Any] = {}
        self.bypassed: set[str] = set()
        self._value_of = value_of
        self.single = single
        self.given: dict[str, Any] = {}

    def value(self, ref: Reference, where: str) -> Any:
        return self._value_of(self, ref, where)

    def _keep_stream(self, name: str) -> bool:
        if not self.stream or name in self.flow.consumed:
            return False
        if self.single:
            return True
        return any(o.reference.kind == "node" and o.reference.name == name and not o.reference.fields
                   for o in self.flow.outputs.values())

    def _invoke(self, node: Node, kwargs: dict[str, Any], keep: bool, entry: dict) -> Any:
        try:
            if node.type == "python":
                out = call_tool(node, load_tool(node, self.flow.import_roots), dict(kwargs), self.provider)
            elif node.type == "prompt":
                out = run_prompt(node, kwargs)
            else:
                out = run_llm(node, kwargs, self.provider, stream=keep)
            return settle(out, keep, lambda text: entry.__setitem__("output", text))
        except ForgeflowError:
            raise
        except Exception as exc:
            err = UpstreamError(f"node {node.name!r} failed: {type(exc).__name__}: {exc}", field=node.name)
            err.details = traceback.format_exc()
            raise err from exc

    def step(self, name: str) -> None:
        node = self.flow.nodes[name]
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"output": None, "status": RunStatus.RUNNING, "duration_s": 0.0, "error": None}
        self.result.node_results[name] = entry
        try:
            if not self.single and _is_bypassed(node, self):
                self.bypassed.add(name)
                entry["status"] = RunStatus.BYPASSED
                return
            if self.single:
                kwargs = _single_node_inputs(self.flow, node, self.given)
            else:
                kwargs = {k: self.value(v, f"node {name!r} input {k!r}") if isinstance(v, Reference) else v
                          for k, v in node.inputs.items()}
            keep = self._keep_stream(name)
            out = _attempts(node, lambda: self._invoke(node, kwargs, keep, entry))
            self.outputs[name] = out
            entry.update(output=out, status=RunStatus.COMPLETED)
        except ForgeflowError as exc:
            entry.update(status=RunStatus.FAILED, error=getattr(exc, "details", None) or exc.message)
            raise
        finally:
            entry["duration_s"] = round(time.perf_counter() - t0, 6)

    def run(self, names: list[str]) -> None:
        """Run `names` (in topological order); a node starts once the nodes it reads are done."""
        if len(names) <= 1:
            for name in names:
                self.step(name)
            return
        members = set(names)
        waiting = {n: set(self.flow.deps[n] & members) for n in names}
        dependants: dict[str, list[str]] = {n: [] for n in names}
        for n in names:
            for d in waiting[n]:
                dependants[d].append(n)
        ready = deque(n for n in names if not waiting[n])
        futures: dict[Any, str] = {}
        error: BaseException | None = None

        def finished(name: str) -> None:
            for child in dependants[name]:
                waiting[child].discard(name)
                if not waiting[child]:
                    ready.append(child)

        while error is None and (ready or futures):
            while ready and error is None:
                name = ready.popleft()
                if ready:  # others can start too: hand this one to the pool
                    futures[_executor().submit(contextvars.copy_context().run, self.step, name)] = name
                    continue
                try:
                    self.step(name)
                    finished(name)
                except BaseException as exc:  # noqa: BLE001 - re-raised after running nodes finish
                    error = exc
            if futures and error is None and not ready:
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                for fut in done:
                    name = futures.pop(fut)
                    if fut.exception() is not None:
                        error = error or fut.exception()
                    else:
                        finished(name)
        if futures:
            wait(futures)
        if error is not None:
            raise error


def _line_value(run: _Run, ref: Reference, where: str) -> Any:
    if ref.kind == "inputs":
        return run.result.inputs[ref.name]
    if ref.name in run.bypassed:
        return None
    return select(run.outputs[ref.name], ref, where)


def _is_bypassed(node: Node, run: _Run) -> bool:
    """Prompt flow's rule: skip when `activate` is unmet or every upstream node was skipped."""
    if node.activate_when is not None:
        when = node.activate_when
        if when.kind == "node" and when.name in run.bypassed:
            return True
        if run.value(when, f"node {node.name!r} activate.when") != node.activate_is:
            return True
    upstream = run.flow.deps[node.name]
    return bool(upstream) and upstream <= run.bypassed


def _single_node_inputs(flow: Flow, node: Node, given: dict[str, Any]) -> dict[str, Any]:
    kwargs = {}
    for key, value in node.inputs.items():
        if not isinstance(value, Reference):
            kwargs[key] = given.get(key, value)
            continue
        expr = str(value)[2:-1]
        for candidate in (key, expr, value.name if value.kind == "inputs" else None):
            if candidate is not None and candidate in given:
                kwargs[key] = given[candidate]
                break
        else:
            spec = flow.inputs.get(value.name) if value.kind == "inputs" else None
            if spec is not None and spec.has_default:
                kwargs[key] = spec.default
            elif spec is not None and spec.is_chat_history:
                kwargs[key] = []
            else:
                raise InvalidInput(f"node {node.name!r}: input {key!r} ({value}) was not given", field=key)
        if value.kind == "inputs":
            kwargs[key] = coerce_value(kwargs[key], flow.inputs[value.name].type, f"input {key!r}")
    return kwargs


def _fail(exc: BaseException, result: FlowResult) -> None:
    result.status = RunStatus.FAILED
    exc.result = result  # type: ignore[attr-defined]


def run_flow(
    flow_dir: Path | str | Flow,
    inputs: dict[str, Any],
    *,
    connection_provider: ConnectionProvider | None = None,
    node: str | None = None,
    stream: bool = False,
    aggregate: bool = True,
    init: dict[str, Any] | None = None,
    variant: str | None = None,
) -> FlowResult:
    """Run a flow (or one node of it, like `pf flow test --node`) and return its results.

    `stream=True` leaves outputs that stream as `StreamingOutput` iterators; `aggregate=False`
    skips aggregation nodes (a batch runs them once via `run_aggregation`); `init` holds a flex
    class entry's constructor arguments; `variant` (`${node.variant_id}`) runs that node variant
    instead of the node's default. On failure the raised error carries `.result` (the partial
    FlowResult) and, for tool errors, `.details` (the traceback).
    """
    flow = load_flow(flow_dir, variant)
    if flow.kind == FlowKind.FLEX:
        return flex.run_flex(flow, inputs, connection_provider, stream=stream, init=init)
    if flow.kind == FlowKind.PROMPTY:
        return prompty.run_prompty(flow, inputs, connection_provider, stream=stream)
    started = time.perf_counter()
    if node is not None and node not in flow.nodes:
        raise NotFound(f"no node {node!r} in {flow.path.name} (nodes: {', '.join(flow.nodes)})", field="node")
    check_requirements(flow.requirements)
    resolved = dict(inputs) if node is not None else resolve_inputs(flow, inputs)
    result = FlowResult(outputs={}, node_results={}, duration_s=0.0, inputs=resolved, node=node,
                        variant=variant_label(flow))
    run = _Run(flow, result, connection_provider, stream, _line_value, single=node is not None)
    run.given = resolved
    with _recorded(flow, result, started):
        if node is not None:
            run.run([node])
            result.outputs = {node: run.outputs[node]}
        else:
            run.run([n for n in flow.order if not flow.nodes[n].aggregation])
            result.outputs = {o.name: run.value(o.reference, f"output {o.name!r}") for o in flow.outputs.values()}
            if aggregate and has_aggregation(flow):
                _aggregate(flow, [result], connection_provider, result)
    return result


@contextmanager
def _recorded(flow: Flow, result: FlowResult, started: float) -> Iterator[None]:
    """Run under the flow's environment variables, collecting log_metric calls and the duration
    into `result`; a domain error marks the result failed before it propagates."""
    metrics, token = compat.start_metrics()
    try:
        with environment_variables(flow.environment_variables):
            yield
    except ForgeflowError as exc:
        _fail(exc, result)
        raise
    finally:
        result.metrics = metrics
        compat.stop_metrics(token)
        result.duration_s = round(time.perf_counter() - started, 6)


def has_aggregation(flow: Flow | Path | str) -> bool:
    """True when the flow has aggregation nodes (or a flex class entry with `__aggregate__`)."""
    flow = load_flow(flow)
    if flow.kind == FlowKind.FLEX:
        return flex.has_aggregate(flow)
    return any(n.aggregation for n in flow.nodes.values())


def _line_view(line: Any) -> tuple[dict, dict, set]:
    """(inputs, node outputs, bypassed nodes) of a FlowResult or its to_dict() form."""
    if isinstance(line, dict):
        inputs, nodes = line.get("inputs") or {}, line.get("node_results") or {}
    else:
        inputs, nodes = line.inputs, line.node_results
    outputs, bypassed = {}, set()
    for name, entry in nodes.items():
        out = entry.get("output")
        outputs[name] = out.text if isinstance(out, StreamingOutput) else out
        if entry.get("status") == RunStatus.BYPASSED:
            bypassed.add(name)
    return inputs, outputs, bypassed


def _aggregate(flow: Flow, lines: list[Any], provider: ConnectionProvider | None, result: FlowResult) -> None:
    views = [_line_view(line) for line in lines]

    def value_of(run: _Run, ref: Reference, where: str) -> Any:
        if ref.kind == "inputs":
            return [inputs.get(ref.name) for inputs, _, _ in views]
        if flow.nodes[ref.name].aggregation:
            return None if ref.name in run.bypassed else select(run.outputs[ref.name], ref, where)
        return [None if ref.name in bypassed or outs.get(ref.name) is None and ref.fields else
                select(outs.get(ref.name), ref, where) for _, outs, bypassed in views]

    run = _Run(flow, result, provider, False, value_of)
    run.run([n for n in flow.order if flow.nodes[n].aggregation])


def run_aggregation(
    flow_dir: Path | str | Flow,
    lines: list[Any],
    *,
    connection_provider: ConnectionProvider | None = None,
    init: dict[str, Any] | None = None,
    variant: str | None = None,
) -> FlowResult:
    """Run the aggregation nodes once over a batch's successful lines (FlowResults or their dicts).

    Each aggregation node gets lists (one item per line) for inputs that read flow inputs or
    line nodes; `outputs` maps aggregation node names to their outputs, `metrics` holds the
    `log_metric` calls.
    """
    flow = load_flow(flow_dir, variant)
    if flow.kind == FlowKind.FLEX:
        return flex.aggregate(flow, lines, connection_provider, init)
    started = time.perf_counter()
    result = FlowResult(outputs={}, node_results={}, duration_s=0.0)
    with _recorded(flow, result, started):
        _aggregate(flow, lines, connection_provider, result)
    result.outputs = {n: e.get("output") for n, e in result.node_results.items()}
    return result


def write_details(flow_dir: Path, result: FlowResult) -> Path:
    """Write a run's inputs, outputs, node results and timings to `.forgeflow/runs/<ts>/details.json`."""
    runs = Path(flow_dir).resolve()
    if runs.is_file():
        runs = runs.parent
    runs = runs / ".forgeflow" / "runs"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S_%fZ")
    run_dir = runs / stamp
    for n in itertools.count(1):
        try:
            run_dir.mkdir(parents=True)
            break
        except FileExistsError:
            run_dir = runs / f"{stamp}-{n}"
    path = run_dir / "details.json"
    body = {"run": run_dir.name, **result.to_dict()}
    path.write_text(json.dumps(jsonable(body), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path

