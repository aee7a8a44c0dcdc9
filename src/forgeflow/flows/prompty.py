"""`.prompty` files: YAML front matter (model api/configuration/parameters, inputs, sample) over a
chat template. `run_flow(path.prompty, inputs)` renders it and makes one chat call; the answer is
the output `output`.

`model.configuration` is Prompt flow's: `type: openai` (api_key, base_url, model),
`type: azure_openai` (api_key, azure_endpoint, azure_deployment, api_version), or
`connection: NAME` (any stored connection, with `model` / `azure_deployment` beside it); values
may be `${env:VAR}`.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

from forgeflow.errors import ForgeflowError, InvalidInput
from forgeflow.flows import compat
from forgeflow.flows.contract import (
    ANY,
    INPUT_TYPES,
    ConnectionProvider,
    Flow,
    FlowInput,
    FlowKind,
    FlowOutput,
    Reference,
    coerce_value,
    resolve_inputs,
)
from forgeflow.flows.nodes import llm, templates
from forgeflow.flows.nodes.python import fetch_connection
from forgeflow.flows.result import FlowResult, RunStatus, settle
from forgeflow.flows.rules import check_chat_rules
from forgeflow.yamlfile import load_yaml

PROMPTY_SUFFIX = ".prompty"
_FRONT = re.compile(r"^\ufeff?---\s*\n(.*?)\n---\s*\n?(.*)$", re.DOTALL)


@dataclasses.dataclass
class PromptySpec:
    template: Any
    variables: frozenset[str]
    configuration: dict
    parameters: dict


def load_prompty(path: Path) -> Flow:
    """The Flow of a `.prompty` file: inputs from its front matter (defaults from `sample`), one output `output`."""
    text = path.read_text(encoding="utf-8")
    m = _FRONT.match(text)
    if not m:
        raise InvalidInput(f"{path.name}: a .prompty file starts with YAML front matter between '---' lines", field="front matter")
    front = load_yaml(m.group(1), f"{path.name}: front matter", field="front matter") or {}
    if not isinstance(front, dict):
        raise InvalidInput(f"{path.name}: front matter must be a mapping", field="front matter")
    model = front.get("model") or {}
    if (model.get("api") or "chat") != "chat":
        raise InvalidInput(f"{path.name}: model.api {model.get('api')!r} is not supported (only 'chat')", field="model.api")
    sample = front.get("sample") if isinstance(front.get("sample"), dict) else {}
    inputs: dict[str, FlowInput] = {}
    for name, raw in (front.get("inputs") or {}).items():
        spec = raw if isinstance(raw, dict) else {"default": raw}
        inp = FlowInput(name=str(name), type=str(spec.get("type", ANY)).replace("number", "double"),
                        is_chat_input=bool(spec.get("is_chat_input")), is_chat_history=bool(spec.get("is_chat_history")))
        if inp.type not in (*INPUT_TYPES, ANY):
            inp.type = ANY
        if "default" in spec:
            inp.default = coerce_value(spec["default"], inp.type, f"{path.name}: inputs.{name}.default")
        elif name in sample:
            inp.default = sample[name]
        inputs[inp.name] = inp
    for name, value in sample.items():
        inputs.setdefault(str(name), FlowInput(name=str(name), type=ANY, default=value))
    template, variables = templates.compile_text(m.group(2), path.name)
    chat = any(i.is_chat_input for i in inputs.values())
    outputs = {"output": FlowOutput("output", "string", Reference("node", "prompty"), is_chat_output=chat)}
    spec = PromptySpec(template, variables, dict(model.get("configuration") or {}), dict(model.get("parameters") or {}))
    flow = Flow(path.parent.resolve(), path, inputs, outputs, {}, [], FlowKind.PROMPTY, spec=spec)
    check_chat_rules(flow)
    return flow


def _connection(spec: PromptySpec, provider: ConnectionProvider | None, where: str) -> tuple[dict, dict]:
    config = compat.resolve_env_refs({"configs": spec.configuration}, where)["configs"]
    settings = {"model": config.get("model") or config.get("azure_deployment")}
    if config.get("azure_deployment"):
        settings["deployment_name"] = config["azure_deployment"]
    if config.get("connection"):
        return fetch_connection(str(config["connection"]), provider, where, "model.configuration.connection"), settings
    kind = config.get("type") or "openai"
    if kind == "openai":
        conn = {"type": "open_ai", "configs": {"base_url": config.get("base_url") or "https://api.openai.com/v1",
                                               "organization": config.get("organization")},
                "secrets": {"api_key": config.get("api_key") or ""}}
    elif kind == "azure_openai":
        conn = {"type": "azure_open_ai", "configs": {"api_base": config.get("azure_endpoint"),
                                                     "api_version": config.get("api_version")},
                "secrets": {"api_key": config.get("api_key") or ""}}
    else:
        raise InvalidInput(f"{where}: model.configuration.type {kind!r} is not openai or azure_openai",
                           field="model.configuration.type")
    return {"name": "prompty", **conn}, settings


def run_prompty(flow: Flow, inputs: dict, provider: ConnectionProvider | None, *, stream: bool) -> FlowResult:
    """Render the template with the inputs and make one chat call; its answer is the output `output`."""
    started = time.perf_counter()
    spec: PromptySpec = flow.spec
    where = flow.path.name
    resolved = resolve_inputs(flow, inputs)
    entry: dict[str, Any] = {"output": None, "status": RunStatus.RUNNING, "duration_s": 0.0, "error": None}
    result = FlowResult(outputs={}, node_results={"prompty": entry}, duration_s=0.0, inputs=resolved)
    try:
        templates.check_variables(spec.variables, set(resolved), where, "inputs")
        messages = templates.to_messages(templates.render(spec.template, resolved, where))
        conn, settings = _connection(spec, provider, where)
        params, extra, unknown = llm.split_inputs(spec.parameters, at="model.parameters")
        if unknown:  # never dropped on the way: a parameter the call cannot send is refused by its name
            key = sorted(unknown)[0]
            raise InvalidInput(f"{where}: model.parameters.{key} is not a parameter forgeflow can send; use one of "
                               f"{', '.join(llm.PARAMETERS + llm.SETTINGS)}", field=f"model.parameters.{key}")
        settings = {**settings, **{k: v for k, v in extra.items() if v is not None}}
        out = llm.chat(conn, messages, params, settings, stream=stream or bool(settings.get("stream")), where=where,
                       at="model.parameters")
        out = settle(out, stream, lambda text: entry.__setitem__("output", text))
        entry.update(output=out, status=RunStatus.COMPLETED)
        result.outputs = {"output": out}
    except ForgeflowError as exc:
        entry.update(status=RunStatus.FAILED, error=getattr(exc, "details", None) or exc.message)
        result.status = RunStatus.FAILED
        exc.result = result  # type: ignore[attr-defined]
        raise
    finally:
        entry["duration_s"] = result.duration_s = round(time.perf_counter() - started, 6)
    return result
