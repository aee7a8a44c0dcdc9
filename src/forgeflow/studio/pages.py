"""Studio's pages and sign-in routes.

`/signin` is public and self-contained; `/` and `/studio/<file>` need a Studio session (see api/security.py),
signed in with the owner token or a personal access token. Signing out ends the session server-side, not only in
this browser.
Every page goes out with a Content-Security-Policy that allows only this origin's scripts plus the
inline scripts of that very page (by hash), so text from the API can never run as code.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from pathlib import Path

import pydantic
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from forgeflow import __version__
from forgeflow.api.security import (READER, current, end_session, services, start_session, studio_principal,
                                    token_principal)
from forgeflow.errors import NotFound, Unauthorized
from forgeflow.store.identity import Role

STATIC = Path(__file__).parent / "static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon",
         ".json": "application/json"}
_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S | re.I)

router = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/api", tags=["studio"])


class SignIn(pydantic.BaseModel):
    token: str = pydantic.Field(max_length=512, description="A personal access token (forgeflow token create), or "
                                "the owner token (forgeflow token show).")


@lru_cache(maxsize=32)
def _page(path: Path, mtime: float) -> tuple[bytes, str]:
    """A file's bytes and the CSP for it (inline scripts allowed by their sha256)."""
    data = path.read_bytes()
    hashes = ""
    if path.suffix == ".html":
        for body in _INLINE_SCRIPT.findall(data.decode()):
            digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
            hashes += f" 'sha256-{digest}'"
    csp = (f"default-src 'self'; script-src 'self'{hashes}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
           "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'")
    return data, csp


def _file_response(path: Path) -> Response:
    data, csp = _page(path, path.stat().st_mtime)
    return Response(data, media_type=TYPES.get(path.suffix, "application/octet-stream"), headers={
        "Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache",
    })


@router.get("/signin", response_class=HTMLResponse)
def signin_page() -> Response:
    return _file_response(STATIC / "signin.html")


@router.get("/", response_class=HTMLResponse)
def studio_page(request: Request) -> Response:
    if studio_principal(request) is None:
        return RedirectResponse("/signin", status_code=303)
    return _file_response(STATIC / "index.html")


@router.get("/studio/{name:path}")
def studio_file(name: str, request: Request) -> Response:
    if studio_principal(request) is None:
        raise Unauthorized("sign in to Studio first: open /signin")
    path = (STATIC / name).resolve()
    if not path.is_relative_to(STATIC.resolve()) or not path.is_file() or path.name == "signin.html":
        raise NotFound(f"no Studio file {name!r}")
    return _file_response(path)


@api.post("/session")
def sign_in(body: SignIn, request: Request, response: Response) -> dict:
    """Exchange a token for a Studio session cookie (HttpOnly, SameSite=Strict); the answer says who signed in."""
    token = body.token.strip()
    principal = token_principal(request, token)
    if principal is None:
        raise Unauthorized("wrong, expired or revoked token: use a personal access token (forgeflow token create) "
                           "or the owner token (forgeflow token show)")
    start_session(request, response, token, principal)
    return {"signed_in": True} | principal.view()


@api.get("/session", dependencies=READER)
def session(request: Request, ff=Depends(services)) -> dict:
    """Who is signed in; the server's home folder only for an owner (where a server keeps its files is no
    reader's business)."""
    me = current(request)
    home = {"home": str(ff.ws.paths.root)} if me.role.covers(Role.OWNER) else {}
    return {"signed_in": True, "version": __version__} | home | me.view()


@api.delete("/session")
def sign_out(request: Request, response: Response) -> dict:
    """End this browser's session (a copy of its cookie stops working too)."""
    end_session(request, response)
    return {"signed_in": False}
