"""Tokens: personal access tokens (made, listed and revoked by id) and the owner token made at init (rotated).

Anyone signed in may make, list and revoke their own tokens; another user's need the owner role. A token's secret
is in the answer that makes it and nowhere else.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from forgeflow.api.security import COOKIE, OWNER, READER, audit_detail, audit_target, current, require, services
from forgeflow.errors import NotFound
from forgeflow.store.identity import DEFAULT_EXPIRY_DAYS, MAX_EXPIRY_DAYS, Role

router = APIRouter(tags=["users"])


class TokenCreate(BaseModel, extra="forbid"):
    user: str | None = Field(None, max_length=64, description="Whose token: yourself when left out; another "
                             "user's needs the owner role.")
    expires_in_days: int = Field(DEFAULT_EXPIRY_DAYS, ge=1, le=MAX_EXPIRY_DAYS,
                                 description=f"Days until the token stops working (1-{MAX_EXPIRY_DAYS}).")
    description: str | None = Field(None, max_length=256, description="What the token is for, shown in lists.")


@router.post("/tokens", status_code=201, dependencies=READER)
def create_token(body: TokenCreate, request: Request, ff=Depends(services)) -> dict:
    """A new personal access token: `token` is its secret, shown this once."""
    me = current(request)
    user = body.user or me.user
    if user != me.user:
        require(me, Role.OWNER, "making a token for another user")
    audit_target(request, user)
    made = ff.ws.identity.create_token(user, expires_in_days=body.expires_in_days, description=body.description,
                                       created_by=me.user)
    audit_detail(request, new_token_id=made["id"], expires_at=made["expires_at"])
    return made


@router.get("/tokens", dependencies=READER)
def list_tokens(request: Request, user: str | None = Query(None, max_length=64, description="One user's tokens."),
                ff=Depends(services)) -> list[dict]:
    """Tokens, never their secrets: an owner sees everyone's (or `user`'s), anyone else their own."""
    me = current(request)
    if me.role != Role.OWNER:
        if user not in (None, me.user):
            require(me, Role.OWNER, "listing another user's tokens")
        user = me.user
    return ff.ws.identity.tokens(user)


@router.delete("/tokens/{token_id}", dependencies=READER)
def revoke_token(token_id: str, request: Request, ff=Depends(services)) -> dict:
    """Revoke a token by id: it and every Studio session signed in with it stop working at once, on every server."""
    me = current(request)
    try:
        token = ff.ws.identity.token(token_id)
    except NotFound:
        token = None
    if token is None or (token["user"] != me.user and not me.role.covers(Role.OWNER)):
        # another user's token id is not the caller's to know: the same answer as for an id that does not exist
        raise NotFound(f"no token with id {token_id!r} (see: forgeflow token list)", field="id")
    audit_detail(request, user=token["user"])
    return ff.ws.identity.revoke(token_id)


@router.post("/token/rotate", dependencies=OWNER)
def rotate(request: Request, response: Response, ff=Depends(services)) -> dict:
    """A new owner token, shown once: the old one and every Studio session signed in with it (this one too) stop
    working at once."""
    result = ff.ws.rotate_admin_token()
    audit_detail(request, token="owner", sessions_ended=result["sessions_ended"])
    if COOKIE in request.cookies and current(request).token_id is None:
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                               secure=request.url.scheme == "https")
    return result
