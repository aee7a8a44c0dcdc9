"""Studio sign-in sessions, kept server-side so that signing out, revoking a token or rotating the owner token ends
them at once.

The browser holds a random session id in a cookie; the studio_sessions table (this class is its one writer) holds
only the id's SHA-256, an expiry time, a tag of the token it was signed in with and, for a personal access token,
that token's id. A copy of the database signs nobody in. A session signed in with the owner token lasts while that
token is the workspace's (its tag names it, so a sign-in racing a rotation cannot outlive it); one signed in with a
personal token lasts while that token is live (not revoked or expired, its user not removed), and takes its user's
role as it is now. Every check reads the tables, so a session ended by one server process is refused by all; it is
one query, the session joined with its token and that token's user.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from forgeflow.store.db import Store, now
from forgeflow.store.identity import PRINCIPAL_COLUMNS, TOKENS, USERS, Identity, Principal, live

TABLE = "studio_sessions"
LIFETIME_S = 7 * 24 * 3600
MAX_ID_CHARS = 256  # a cookie longer than any id this class makes is refused without hashing it


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _tag(token: str) -> str:
    return hashlib.sha256(f"studio-session-token:{token}".encode()).hexdigest()


class Sessions:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.identity = Identity(store)

    def start(self, token: str, token_id: str | None = None, at: float | None = None) -> str:
        """A new session id for someone who signed in with `token` (the owner token, or the personal token
        `token_id`), valid for LIFETIME_S while that token is; sessions that have expired are cleared on the way."""
        at = time.time() if at is None else at
        self.store.execute(f"DELETE FROM {TABLE} WHERE expires_at < :t", {"t": int(at)})
        session_id = secrets.token_urlsafe(32)
        self.store.insert(TABLE, {"id_hash": _digest(session_id), "token_tag": _tag(token), "token_id": token_id,
                                  "created_at": now(), "expires_at": int(at + LIFETIME_S)})
        return session_id

    def principal(self, session_id: str | None, owner_token: Callable[[], str],
                  at: float | None = None) -> Principal | None:
        """Who a session `start` made stands for, while it has not expired or been ended and its token is live. The
        owner token is read (and decrypted) only for a session signed in with it."""
        if not session_id or len(session_id) > MAX_ID_CHARS:
            return None
        # The lookup is by the id's hash, so its timing tells nothing about the ids the table holds. A personal
        # token's session comes with that token and its user (outer joins: the owner token's has neither).
        rows = self.store.query(
            f"SELECT s.expires_at, s.token_tag, s.token_id AS session_token_id, {PRINCIPAL_COLUMNS} FROM {TABLE} s "
            f"LEFT JOIN {TOKENS} t ON t.id = s.token_id LEFT JOIN {USERS} u ON u.name = t.user_name "
            "WHERE s.id_hash = :h", {"h": _digest(session_id)})
        if not rows or rows[0]["expires_at"] < (time.time() if at is None else at):
            return None
        row = rows[0]
        if row["session_token_id"] is not None:
            return live(row, at)
        return self.identity.owner() if hmac.compare_digest(row["token_tag"], _tag(owner_token())) else None

    def end(self, session_id: str | None) -> bool:
        """Sign one session out; False when there was no such session."""
        if not session_id or len(session_id) > MAX_ID_CHARS:
            return False
        return self.store.delete(TABLE, {"id_hash": _digest(session_id)}) > 0

    def end_owner_sessions(self) -> int:
        """Sign out everyone who signed in with the owner token (it changed); how many sessions ended."""
        return self.store.execute(f"DELETE FROM {TABLE} WHERE token_id IS NULL")
