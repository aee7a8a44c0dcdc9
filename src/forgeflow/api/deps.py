"""Request dependencies shared by the control-plane routes."""

from __future__ import annotations

from fastapi import Depends, Request

from forgeflow.errors import Unauthorized
from forgeflow.store.secrets import same
from forgeflow.studio.session import COOKIE, HEADER, valid_session


def services(request: Request):
    return request.app.state.ff


def bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def studio_signed_in(request: Request) -> bool:
    """A Studio browser session: the signed cookie (the CSRF header is checked by require_admin)."""
    return valid_session(request.cookies.get(COOKIE), request.app.state.ff.ws.admin_token())


def require_admin(request: Request) -> None:
    """Every control-plane route needs the workspace admin token as a bearer token, or a Studio session."""
    token = bearer(request)
    if token is None and COOKIE in request.cookies:
        if not studio_signed_in(request):
            raise Unauthorized("the Studio session has expired or the admin token changed: sign in again")
        if request.headers.get(HEADER) != "1":
            raise Unauthorized(f"a Studio session must send the header '{HEADER}: 1'")
        return
    if not same(token, request.app.state.ff.ws.admin_token()):
        raise Unauthorized("missing or wrong admin token: send 'Authorization: Bearer <token>' "
                           "(see: forgeflow token show)")


ADMIN = [Depends(require_admin)]
