"""Studio sign-in: a browser session proven by an HttpOnly cookie instead of a bearer header.

The cookie holds an expiry time and an HMAC of it keyed by the workspace admin token, so nothing is stored
server-side, a server restart keeps people signed in, and a new admin token signs everyone out. Requests that
authenticate with the cookie must also carry `X-Forgeflow-Studio: 1`: a page on another site cannot add that
header to a cross-origin request without a CORS preflight, which this server never grants (CSRF guard).
"""

from __future__ import annotations

import hashlib
import hmac
import time

from forgeflow.store.secrets import same

COOKIE = "ff_studio"
HEADER = "x-forgeflow-studio"
LIFETIME_S = 7 * 24 * 3600


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
