"""Request dependencies shared by the control-plane routes."""

from __future__ import annotations

from fastapi import Depends, Request

from forgeflow.errors import Unauthorized
from forgeflow.store.secrets import same


def services(request: Request):
    return request.app.state.ff


def require_admin(request: Request) -> None:
    """Every control-plane route needs the workspace admin token as a bearer token."""
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    if not same(token, request.app.state.ff.ws.admin_token()):
        raise Unauthorized("missing or wrong admin token: send 'Authorization: Bearer <token>' "
                           "(see: forgeflow token show)")


ADMIN = [Depends(require_admin)]
