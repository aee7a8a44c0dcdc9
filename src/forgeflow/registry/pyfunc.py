"""The MLflow pyfunc that forgeflow wrote before it saved models with MLflow's transformers flavor: messages in,
the assistant's text out. Kept so a model folder written then (its python_model.pkl names this class) still
loads with `mlflow.pyfunc.load_model` where forgeflow is installed; new models need no forgeflow at all
(registry/mlflow_format.py).

It answers through the same runtime and chat contract the model server uses, so such a model behaves exactly
like its deployment.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc

from forgeflow.chat import chat_request
from forgeflow.errors import InvalidInput

GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "do_sample", "seed")


class ChatModel(mlflow.pyfunc.PythonModel):
    """Chat completion over a HF causal LM stored in the model's `model` artifact."""

    # Chat input is free-form (list, dict or DataFrame); MLflow's type-hint validation would reject it.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from forgeflow.inference.generation import ChatGenerator

        self.runtime = ChatGenerator(context.artifacts["model"], device="auto")

    def predict(self, context, model_input, params=None):  # untyped: MLflow turns type hints into a schema
        conversations, single, request_params = _conversations(model_input)
        merged = {**request_params, **(params or {})}
        answers = [self.chat(messages, merged) for messages in conversations]
        return answers[0] if single else answers

    def chat(self, messages: list[dict], params: dict | None = None) -> str:
        """Generate the assistant's next message for one conversation (greedy unless asked to sample)."""
        params = dict(params or {})
        if "max_tokens" in params:  # Azure's chat models take either name
            params.setdefault("max_new_tokens", params.pop("max_tokens"))
        unknown = sorted(k for k in params if k not in GENERATION_KEYS)
        if unknown:  # never ignored: a setting this model cannot honour is refused by name
            raise InvalidInput(f"params.{unknown[0]} is not a generation setting this model takes; use "
                               f"{', '.join(GENERATION_KEYS)} or max_tokens", field=f"params.{unknown[0]}")
        kwargs = {k: v for k, v in params.items() if v is not None}
        if "max_new_tokens" in kwargs:
            kwargs["max_new_tokens"] = int(kwargs["max_new_tokens"])
        kwargs["do_sample"] = bool(kwargs.get("do_sample", False))
        return self.runtime.generate(chat_request(messages, **kwargs)).text


def _conversations(model_input: Any) -> tuple[list[list[dict]], bool, dict]:
    """Normalise the accepted input shapes into (conversations, single?, params)."""
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):
        rows = model_input.to_dict(orient="records")
        if "messages" not in model_input.columns:
            raise InvalidInput("a DataFrame input needs a 'messages' column", field="messages")
        return [_messages(row["messages"]) for row in rows], False, {}
    if isinstance(model_input, dict):
        body = model_input.get("input_data", model_input)
        messages = body.get("messages", body.get("input_string"))
        params = {**(body.get("parameters") or {}), **(body.get("params") or {})}
        if messages is None:
            raise InvalidInput("input needs 'messages' (a list of {role, content})", field="messages")
        return [_messages(messages)], True, dict(params)
    if isinstance(model_input, list) and model_input and all(isinstance(m, dict) for m in model_input):
        if all("role" in m for m in model_input):
            return [_messages(model_input)], True, {}
        return [_messages(m.get("messages")) for m in model_input], False, {}
    if isinstance(model_input, list) and model_input and all(isinstance(m, list) for m in model_input):
        return [_messages(m) for m in model_input], False, {}
    raise InvalidInput("input must be a list of chat messages or {'messages': [...], 'params': {...}}", field="messages")


def _messages(value: Any) -> Any:
    """A conversation as plain Python: a DataFrame cell holds an array, and a missing content is empty.
    The chat contract (`chat_request`) validates it."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, list):
        return value
    return [{**m, "content": str(m.get("content") or "")} if isinstance(m, dict) else m for m in value]
