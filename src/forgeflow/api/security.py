"""Who may call the control plane: the workspace admin token as a bearer token, or a Studio session.

A Studio session is an HttpOnly cookie holding an expiry time and an HMAC of it keyed by the admin token, so
nothing is stored server-side, a server restart keeps people signed in, and a new admin token signs everyone out.
Requests that authenticate with the cookie must also carry `X-Forgeflow-Studio: 1`: a page on another site cannot
add that header to a cross-origin request without a CORS preflight, which this server never grants (CSRF guard).
Secrets are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from fastapi import Depends, Request, Response

from forgeflow.errors import Unauthorized
from forgeflow.store.secrets import same

COOKIE = "ff_studio"
HEADER = "x-forgeflow-studio"
LIFETIME_S = 7 * 24 * 3600


def services(request: Request):
    """The services the composition root built (api/app.py), for routes and for the checks below."""
    return request.app.state.ff


def bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def is_admin_token(request: Request, token: str | None) -> bool:
    return same(token, services(request).ws.admin_token())


def _mac(admin_token: str, expires: int) -> str:
    return hmac.new(admin_token.encode(), f"studio-session:{expires}".encode(), hashlib.sha256).hexdigest()


def new_session(admin_token: str, now: float | None = None) -> str:
    expires = int((now if now is not None else time.time()) + LIFETIME_S)
    return f"{expires}.{_mac(admin_token, expires)}"


def valid_session(value: str | None, admin_token: str, now: float | None = None) -> bool:
    if not value or not admin_token:
        return False
    expires, _, mac = value.partition(".")
    if not (expires.isascii() and expires.isdigit()) or int(expires) < (now if now is not None else time.time()):
        return False
    return same(mac, _mac(admin_token, int(expires)))


def start_session(request: Request, response: Response) -> None:
    """Set the session cookie (HttpOnly, SameSite=Strict) on a response to a sign-in with the admin token."""
    cookie = new_session(services(request).ws.admin_token())
    response.set_cookie(COOKIE, cookie, max_age=LIFETIME_S, httponly=True, samesite="strict", path="/")


def end_session(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")


def studio_signed_in(request: Request) -> bool:
    """A Studio browser session: the signed cookie (the CSRF header is checked by require_admin)."""
    return valid_session(request.cookies.get(COOKIE), services(request).ws.admin_token())


def require_admin(request: Request) -> None:
    """Every control-plane route needs the workspace admin token as a bearer token, or a Studio session."""
    token = bearer(request)
    if token is None and COOKIE in request.cookies:
        if not studio_signed_in(request):
            raise Unauthorized("the Studio session has expired or the admin token changed: sign in again")
        if request.headers.get(HEADER) != "1":
            raise Unauthorized(f"a Studio session must send the header '{HEADER}: 1'")
        return
    if not is_admin_token(request, token):
        raise Unauthorized("missing or wrong admin token: send 'Authorization: Bearer <token>' "
                           "(see: forgeflow token show)")


ADMIN = [Depends(require_admin)]
