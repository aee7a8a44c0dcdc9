"""The chat contract every hop speaks: the one typed `ChatRequest` a runtime receives, and the bodies on the
wire that become it: Azure ML's scoring body (`score`), OpenAI's chat body (`openai_chat`) and its legacy
completions body (`openai_completions`).

A body is validated once, where it arrives (`parse_score_request`, `parse_chat_completion_request`,
`parse_completion_request`), and converted once (`to_request`, or `to_requests` for OpenAI's `n` choices);
runtimes take the `ChatRequest` as it is. Every key is known: one forgeflow cannot honour is a 400, and every
error names its field path (`input_data.input_string[1].role`, `messages[0].content[1].type`). Python callers
without a body build the request with `chat_request`, clients build the scoring body with `score_body`.
OpenAI's error shape, and the stream events more than one hop writes, are `openai_answers`'.
"""

from forgeflow.chat.openai_answers import USAGE_COMMENT, error_event, is_error_event, openai_error, usage_comment
from forgeflow.chat.openai_base import MAX_CHOICES, MAX_MODEL_NAME, OpenAIBody, StreamOptions
from forgeflow.chat.openai_chat import ChatCompletionRequest, parse_chat_completion_request
from forgeflow.chat.openai_completions import DEFAULT_COMPLETION_TOKENS, CompletionRequest, parse_completion_request
from forgeflow.chat.request import (DEFAULT_MAX_NEW_TOKENS, MAX_NEW_TOKENS, MAX_STOPS, ROLES, ChatRequest,
                                    OutputFormat, Role, Sampling, Tools, chat_request, per_choice)
from forgeflow.chat.score import ScoreParameters, ScoreRequest, ScoreResponse, parse_score_request, score_body

__all__ = [
    "DEFAULT_COMPLETION_TOKENS", "DEFAULT_MAX_NEW_TOKENS", "MAX_CHOICES", "MAX_MODEL_NAME", "MAX_NEW_TOKENS",
    "MAX_STOPS", "ROLES", "USAGE_COMMENT",
    "ChatCompletionRequest", "ChatRequest", "CompletionRequest", "OpenAIBody", "OutputFormat", "Role", "Sampling",
    "ScoreParameters", "ScoreRequest", "ScoreResponse", "StreamOptions", "Tools", "chat_request",
    "error_event", "is_error_event", "openai_error", "parse_chat_completion_request", "parse_completion_request",
    "parse_score_request", "per_choice", "score_body", "usage_comment",
]
