"""Who may call the control plane: the workspace admin token as a bearer token, or a Studio session.

A Studio session is an HttpOnly cookie holding a random id the store keeps (hashed) server-side
(store/sessions.py): signing out ends it at once, `forgeflow token rotate` ends them all, and a server restart
keeps people signed in. The cookie is `Secure` when the request came over HTTPS (the request's own URL scheme:
an X-Forwarded-Proto header is not trusted). Requests that authenticate with the cookie must also carry
`X-Forgeflow-Studio: 1`: a page on another site cannot add that header to a cross-origin request without a CORS
preflight, which this server never grants (CSRF guard). Secrets are compared in constant time.

The checks read only headers and cookies, so the body guard (api/guard.py) runs them before a body is read.
"""

from __future__ import annotations

from fastapi import Depends, Request, Response
from starlette.requests import HTTPConnection

from forgeflow.errors import Unauthorized
from forgeflow.store.secrets import same
from forgeflow.store.sessions import LIFETIME_S

COOKIE = "ff_studio"
HEADER = "x-forgeflow-studio"
CHECKED = "forgeflow.admin"  # set in the request's state once the admin credential passed (by the body guard)


def services(request: HTTPConnection):
    """The services the composition root built (api/app.py), for routes and for the checks below."""
    return request.app.state.ff


def bearer(request: HTTPConnection) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def is_admin_token(request: HTTPConnection, token: str | None) -> bool:
    return same(token, services(request).ws.admin_token())


def start_session(request: Request, response: Response, admin_token: str) -> None:
    """Set the session cookie (HttpOnly, SameSite=Strict, Secure over HTTPS) on a response to a sign-in with
    `admin_token` (the session lasts only while that token is the workspace's)."""
    session_id = services(request).ws.sessions.start(admin_token)
    response.set_cookie(COOKIE, session_id, max_age=LIFETIME_S, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")


def end_session(request: Request, response: Response) -> None:
    """Sign this browser out: its session ends server-side, so a copy of the cookie no longer works either."""
    services(request).ws.sessions.end(request.cookies.get(COOKIE))
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")


def studio_signed_in(request: HTTPConnection) -> bool:
    """A Studio browser session that has not expired or been ended (the CSRF header is checked by check_admin)."""
    ws = services(request).ws
    return ws.sessions.valid(request.cookies.get(COOKIE), ws.admin_token())


def presents_credential(request: HTTPConnection) -> bool:
    """Whether the request carries anything that could be a credential (only those count as failed attempts)."""
    return bool(bearer(request) or request.headers.get("api-key") or request.cookies.get(COOKIE))


def check_admin(request: HTTPConnection) -> None:
    """The admin token as a bearer token, or a Studio session with its CSRF header; else Unauthorized."""
    token = bearer(request)
    if token is None and COOKIE in request.cookies:
        if not studio_signed_in(request):
            raise Unauthorized("the Studio session has ended (signed out, expired or the admin token was rotated): "
                               "sign in again")
        if request.headers.get(HEADER) != "1":
            raise Unauthorized(f"a Studio session must send the header '{HEADER}: 1'")
        return
    if not is_admin_token(request, token):
        raise Unauthorized("missing or wrong admin token: send 'Authorization: Bearer <token>' "
                           "(see: forgeflow token show)")


def require_admin(request: Request) -> None:
    """Every control-plane route needs the workspace admin token as a bearer token, or a Studio session."""
    if request.scope.get("state", {}).get(CHECKED):
        return  # the body guard checked this very request before its body was read
    check_admin(request)


ADMIN = [Depends(require_admin)]
