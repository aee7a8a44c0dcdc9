"""Who calls the control plane, and what their role lets them do.

A caller is a principal (store/identity.py: user, role, the personal token used): a bearer token (the owner token
made at init, or a personal access token `ffp_...`) or a Studio session. A Studio session is an HttpOnly cookie
holding a random id the store keeps (hashed) server-side with the token it was signed in with
(store/sessions.py): signing out ends it at once, so do revoking its token, removing its user and, for one signed
in with the owner token, `forgeflow token rotate`. The cookie is `Secure` when the request came over HTTPS (the
request's own URL scheme: an X-Forwarded-Proto header is not trusted). Requests that authenticate with the cookie
must also carry `X-Forgeflow-Studio: 1`: a page on another site cannot add that header to a cross-origin request
without a CORS preflight, which this server never grants (CSRF guard).

Every check reads the store (no cache), so a token revoked or a role changed through one server is seen by every
server at the next request. The checks read only headers and cookies, so the guard (api/guard.py) runs them
before a body is read and leaves the principal in the request's state.

Roles: every control-plane route declares the least role it needs exactly once, next to the route
(`dependencies=READER`, `CONTRIBUTOR` or `OWNER`); `tests/api/test_roles.py` walks the routes and fails for one
without. A route whose answer depends on more than the route (a connection's secrets asked for in the query,
another user's tokens) checks that part with `require`, naming what needs the higher role.
"""

from __future__ import annotations

from fastapi import Depends, Request, Response
from starlette.requests import HTTPConnection

from forgeflow.errors import Forbidden, Unauthorized
from forgeflow.store.identity import Principal, Role
from forgeflow.store.sessions import LIFETIME_S

COOKIE = "ff_studio"
HEADER = "x-forgeflow-studio"
PRINCIPAL = "forgeflow.principal"  # the request's principal, in its state, once a credential passed
TARGET = "forgeflow.audit_target"  # what a change acted on, for the audit log, when no path parameter names it
DETAIL = "forgeflow.audit_detail"  # what a change was (a new role, a token's id), for the audit log: never a secret
SECRET_READ = "forgeflow.secret_read"  # a read that hands out secrets: audited like a change


def services(request: HTTPConnection):
    """The services the composition root built (api/app.py), for routes and for the checks below."""
    return request.app.state.ff


def bearer(request: HTTPConnection) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def token_principal(request: HTTPConnection, token: str | None) -> Principal | None:
    """The principal a token stands for (the owner token or a live personal token), or None."""
    ws = services(request).ws
    return ws.identity.authenticate(token, ws.admin_token)


def studio_principal(request: HTTPConnection) -> Principal | None:
    """The principal of a Studio browser session that has not ended (the CSRF header is checked by authenticate)."""
    ws = services(request).ws
    session_id = request.cookies.get(COOKIE)
    return ws.sessions.principal(session_id, ws.admin_token) if session_id else None


def presents_credential(request: HTTPConnection) -> bool:
    """Whether the request carries anything that could be a credential (only those count as failed attempts)."""
    return bool(bearer(request) or request.headers.get("api-key") or request.cookies.get(COOKIE))


def authenticate(request: HTTPConnection) -> Principal:
    """A bearer token, or a Studio session with its CSRF header; else Unauthorized."""
    token = bearer(request)
    if token is None and COOKIE in request.cookies:
        principal = studio_principal(request)
        if principal is None:
            raise Unauthorized("the Studio session has ended (signed out, expired, or its token was revoked or "
                               "rotated): sign in again")
        if request.headers.get(HEADER) != "1":
            raise Unauthorized(f"a Studio session must send the header '{HEADER}: 1'")
        return principal
    principal = token_principal(request, token)
    if principal is None:
        raise Unauthorized("missing, wrong, expired or revoked token: send 'Authorization: Bearer <token>' with the "
                           "owner token (forgeflow token show) or a personal access token (forgeflow token create)")
    return principal


def current(request: Request) -> Principal:
    """The request's principal: the one the guard found before the body was read, else found now."""
    state = request.scope.setdefault("state", {})
    if state.get(PRINCIPAL) is None:
        state[PRINCIPAL] = authenticate(request)
    return state[PRINCIPAL]


def require(principal: Principal, role: Role, what: str = "this") -> None:
    """Forbidden, naming the role missing, unless `principal`'s role covers `role`."""
    if not principal.role.covers(role):
        raise Forbidden(f"{what} needs the {role} role; you are {principal.role} (user {principal.user!r}): ask an "
                        f"owner (forgeflow user update {principal.user} --role {role})")


class Needs:
    """A route's declared role: the dependency that lets a principal whose role covers it through."""

    def __init__(self, role: Role) -> None:
        self.role = role

    def __call__(self, request: Request) -> Principal:
        principal = current(request)
        require(principal, self.role)
        return principal

    def __repr__(self) -> str:
        return f"Needs({self.role})"


READER = [Depends(Needs(Role.READER))]
CONTRIBUTOR = [Depends(Needs(Role.CONTRIBUTOR))]
OWNER = [Depends(Needs(Role.OWNER))]


def audit_target(request: Request, name: str) -> None:
    """Name what a change acts on for the audit log, where the route's path does not (a create's new name)."""
    request.scope.setdefault("state", {})[TARGET] = name


def audit_detail(request: Request, **detail) -> None:
    """Say what a change was, for the audit log (a new role, a token's id and expiry): never a secret."""
    request.scope.setdefault("state", {}).setdefault(DETAIL, {}).update(detail)


def audit_secret_read(request: Request, **detail) -> None:
    """Have this read audited like a change: it hands out secrets (an endpoint's keys, a connection's), as Azure
    logs a listKeys. `detail` says which, never the secrets themselves."""
    request.scope.setdefault("state", {})[SECRET_READ] = True
    audit_detail(request, **detail)


def start_session(request: Request, response: Response, token: str, principal: Principal) -> None:
    """Set the session cookie (HttpOnly, SameSite=Strict, Secure over HTTPS) on a response to a sign-in with `token`,
    which stands for `principal` (the session lasts while that token does)."""
    session_id = services(request).ws.sessions.start(token, principal.token_id)
    request.scope.setdefault("state", {})[PRINCIPAL] = principal  # who signed in, for the audit log
    response.set_cookie(COOKIE, session_id, max_age=LIFETIME_S, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")


def end_session(request: Request, response: Response) -> None:
    """Sign this browser out: its session ends server-side, so a copy of the cookie no longer works either."""
    request.scope.setdefault("state", {})[PRINCIPAL] = studio_principal(request)  # who signed out, for the audit log
    services(request).ws.sessions.end(request.cookies.get(COOKIE))
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")
