"""Endpoint auth: keys (`auth_mode: key`) and expiring signed tokens (`auth_mode: token`).

A token is `fft1.<payload>.<signature>`: payload is base64url JSON `{"e": endpoint, "exp": unix
seconds}`, signature is base64url HMAC-SHA256 of `fft1.<payload>` under the endpoint's signing
secret (its stored primary key, never shown in token mode). Verification recomputes the MAC and
compares in constant time before it reads the payload, then checks the endpoint and the expiry;
regenerating the primary key revokes every token at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from datetime import datetime, timezone

from fastapi import Request

TOKEN_PREFIX = "fft1"
DEFAULT_TOKEN_TTL_S = 3600.0


def token_ttl_s() -> float:
    """How long a token lives: FORGEFLOW_ENDPOINT_TOKEN_TTL_S (seconds), else one hour."""
    return float(os.environ.get("FORGEFLOW_ENDPOINT_TOKEN_TTL_S", DEFAULT_TOKEN_TTL_S))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, signed: str) -> str:
    return _b64(hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest())


def issue_token(secret: str, endpoint: str, ttl_s: float | None = None) -> dict:
    """A fresh token for the endpoint, shaped like `az ml online-endpoint get-credentials` answers."""
    ttl = token_ttl_s() if ttl_s is None else ttl_s
    exp = time.time() + ttl
    payload = _b64(json.dumps({"e": endpoint, "exp": round(exp, 3)}, separators=(",", ":")).encode())
    signed = f"{TOKEN_PREFIX}.{payload}"
    return {
        "access_token": f"{signed}.{_mac(secret, signed)}",
        "token_type": "Bearer",
        "expires_at": exp,
        "expiry_time_utc": datetime.fromtimestamp(exp, timezone.utc).isoformat(timespec="seconds"),
        "refresh_after_time_utc": datetime.fromtimestamp(time.time() + ttl / 2, timezone.utc).isoformat(timespec="seconds"),
    }


def verify_token(secret: str, endpoint: str, token: str | None) -> bool:
    """True for an unexpired token this endpoint's secret signed."""
    if not token or token.count(".") != 2:
        return False
    prefix, payload, sig = token.split(".")
    if prefix != TOKEN_PREFIX:
        return False
    if not hmac.compare_digest(sig.encode(), _mac(secret, f"{prefix}.{payload}").encode()):
        return False
    try:
        claims = json.loads(_unb64(payload))
    except ValueError:
        return False
    return claims.get("e") == endpoint and float(claims.get("exp", 0)) > time.time()


def presented_credential(request: Request) -> str | None:
    """The bearer token or `api-key` header a caller sent (OpenAI clients send the former)."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("api-key")
