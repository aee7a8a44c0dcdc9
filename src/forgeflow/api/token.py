"""The workspace admin token: rotating it (the REST side of `forgeflow token rotate`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from forgeflow.api.security import ADMIN, COOKIE, services

router = APIRouter(dependencies=ADMIN, tags=["server"])


@router.post("/token/rotate")
def rotate(request: Request, response: Response, ff=Depends(services)) -> dict:
    """A new admin token, shown once: the old token and every Studio session (this one too) stop working at once."""
    result = ff.ws.rotate_admin_token()
    if COOKIE in request.cookies:
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                               secure=request.url.scheme == "https")
    return result
