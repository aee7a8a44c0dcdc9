"""Domain exceptions. Core code raises these; the CLI turns them into one readable line, the REST layer into a
JSON error `{"error": CLASS, "message": ..., "field": ...}` with the class's status, and the client back into
the class the body names.

    ForgeflowError          a failure no subclass names                                 (500)
    ├── InvalidInput        bad name, bad value, malformed body or file                 (400)
    ├── Unauthorized        missing or wrong key / token / Studio session               (401)
    ├── Forbidden           a known identity whose role (or grant) does not allow it    (403)
    ├── NotFound            no such job, model, endpoint, file, ...                     (404)
    ├── RequestTimeout      no answer in time: a flow run, a scoring call, the server   (408)
    ├── Conflict            already exists, wrong state for the action                  (409)
    ├── PayloadTooLarge     a body or upload over its size limit                        (413)
    ├── TooManyRequests     more requests waiting than the model server accepts         (429)
    ├── UpstreamError       a worker, model server or flow node failed                  (424)
    ├── InternalError       an unexpected exception in the server (a bug: see its log)  (500)
    └── ServerUnavailable   no server answers, or it is loading or shutting down        (503)

Foreign errors are mapped onto the tree once, at the edge that meets them: request bodies pydantic rejects
become InvalidInput in the REST app (api/app.py), httpx transport errors become ServerUnavailable or
RequestTimeout in the client (client.py). Messages are cut to MAX_MESSAGE_CHARS where the exception is made, so no
error body, CLI line or log entry carries megabytes.
"""

from __future__ import annotations

MAX_MESSAGE_CHARS = 4000  # an error body stays small whatever went wrong (a repr of a huge value, a long traceback)


def shorten(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` cut to at most `limit` characters, saying how many were left out."""
    if len(text) <= limit:
        return text
    keep = max(limit - len(f" ... ({len(text):,} more characters)"), 0)
    return text[:keep] + f" ... ({len(text) - keep:,} more characters)"


class ForgeflowWarning(UserWarning):
    """Warnings forgeflow itself emits (tests turn them into errors)."""


class ForgeflowError(Exception):
    status_code = 500

    def __init__(self, message: str, *, field: str | None = None, status_code: int | None = None) -> None:
        message = shorten(str(message))
        super().__init__(message)
        self.message = message
        self.field = shorten(str(field), 200) if field else field  # the option, body field or flow node it is about
        self.status_code = status_code or type(self).status_code  # the status an answer carried, else the class's

    def to_dict(self) -> dict:
        body = {"error": type(self).__name__, "message": self.message}
        if self.field:
            body["field"] = self.field
        return body


class InvalidInput(ForgeflowError):
    status_code = 400


class Unauthorized(ForgeflowError):
    status_code = 401


class Forbidden(ForgeflowError):
    status_code = 403


class NotFound(ForgeflowError):
    status_code = 404


class RequestTimeout(ForgeflowError):
    status_code = 408


class Conflict(ForgeflowError):
    status_code = 409


class PayloadTooLarge(ForgeflowError):
    status_code = 413


class TooManyRequests(ForgeflowError):
    status_code = 429


class UpstreamError(ForgeflowError):
    status_code = 424


class InternalError(ForgeflowError):
    status_code = 500


class ServerUnavailable(ForgeflowError):
    status_code = 503


_BY_NAME = {c.__name__: c for c in (InvalidInput, Unauthorized, Forbidden, NotFound, RequestTimeout, Conflict,
                                    PayloadTooLarge, TooManyRequests, UpstreamError, InternalError, ServerUnavailable)}


def by_name(name: str, default: type[ForgeflowError] = ForgeflowError) -> type[ForgeflowError]:
    """The error class an error body names (`{"error": "NotFound", ...}`)."""
    return _BY_NAME.get(str(name), default)


def from_dict(status: int, body: dict) -> ForgeflowError:
    """Rebuild the exception a server raised from its JSON error body and status (used by the client)."""
    return by_name(body.get("error"))(str(body.get("message") or body), field=body.get("field"), status_code=status)
