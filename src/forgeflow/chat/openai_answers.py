"""What more than one hop writes in OpenAI's answer shapes: the error body (`{"error": {"message", "type",
"param", "code"}}`), the same error as a stream's in-band event (a failure after the first chunk, when the
status is already sent), and the usage comment an instance ends every stream with for its gateway's metrics.
"""

from __future__ import annotations

import json
from typing import Any

from forgeflow.errors import ForgeflowError

# A server-sent-event comment (a line starting ":" that SSE readers skip) holding a stream's token counts; an
# instance writes it when the client did not ask for the usage chunk, and the gateway reads and removes it.
USAGE_COMMENT = b": forgeflow-usage "


def openai_error(exc: ForgeflowError) -> dict[str, Any]:
    """An error in OpenAI's shape; `param` is the field at fault, `code` the kind of error (its class's name)."""
    status = exc.status_code
    kind = "server_error" if status >= 500 or status in (408, 424) else "invalid_request_error"
    return {"error": {"message": exc.message, "type": kind, "param": exc.field, "code": type(exc).__name__}}


def error_event(exc: ForgeflowError) -> str:
    """The event a stream ends with when its answer fails after the first chunk; no `data: [DONE]` follows it,
    so a client knows the answer is incomplete (OpenAI's clients raise the error)."""
    return f"data: {json.dumps(openai_error(exc))}\n\n"


def is_error_event(event: Any) -> bool:
    """Whether a stream's parsed `data:` payload is an error event."""
    return isinstance(event, dict) and isinstance(event.get("error"), dict)


def usage_comment(usage: dict[str, int]) -> str:
    return f"{USAGE_COMMENT.decode()}{json.dumps(usage)}\n\n"
