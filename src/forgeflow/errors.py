"""Domain exceptions. Core code raises these; the CLI and the REST layer turn them into
one readable line / a JSON error with the right status.

    ForgeflowError
    ├── InvalidInput        bad name, bad value, malformed file        (400)
    ├── NotFound            no such job, model, endpoint, file, ...    (404)
    ├── Conflict            already exists, wrong state for the action (409)
    ├── Unauthorized        missing or wrong key / token               (401)
    ├── TooManyRequests     a deployment's request queue is full       (429)
    ├── ServerUnavailable   no forgeflow server answers at the URL     (CLI only)
    └── UpstreamError       a worker or model server failed            (424 / 500)
"""

from __future__ import annotations


class ForgeflowWarning(UserWarning):
    """Warnings forgeflow itself emits (tests turn them into errors)."""


class ForgeflowError(Exception):
    status_code = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict:
        body = {"error": type(self).__name__, "message": self.message}
        if self.field:
            body["field"] = self.field
        return body


class InvalidInput(ForgeflowError):
    status_code = 400


class NotFound(ForgeflowError):
    status_code = 404


class Conflict(ForgeflowError):
    status_code = 409


class Unauthorized(ForgeflowError):
    status_code = 401


class RequestTimeout(ForgeflowError):
    status_code = 408


class PayloadTooLarge(ForgeflowError):
    status_code = 413


class TooManyRequests(ForgeflowError):
    status_code = 429


class ServerUnavailable(ForgeflowError):
    status_code = 503


class UpstreamError(ForgeflowError):
    status_code = 424


_BY_NAME = {c.__name__: c for c in (InvalidInput, NotFound, Conflict, Unauthorized, RequestTimeout, PayloadTooLarge,
                                    TooManyRequests, ServerUnavailable, UpstreamError)}


def by_name(name: str, default: type[ForgeflowError] = ForgeflowError) -> type[ForgeflowError]:
    """The error class an error body names (`{"error": "NotFound", ...}`)."""
    return _BY_NAME.get(str(name), default)


def from_dict(status: int, body: dict) -> ForgeflowError:
    """Rebuild the exception a server raised from its JSON error body (used by the client)."""
    cls = _BY_NAME.get(str(body.get("error")), ForgeflowError)
    err = cls(str(body.get("message") or body), field=body.get("field"))
    err.status_code = status
    return err
