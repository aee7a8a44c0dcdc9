"""Studio sign-in sessions, kept server-side so that signing out or rotating the admin token ends them at once.

The browser holds a random session id in a cookie; the studio_sessions table (this class is its one writer)
holds only the id's SHA-256, an expiry time and a tag of the admin token it was signed in with, so a copy of the
database signs nobody in, and a sign-in racing a token rotation cannot outlive it (its tag names the old token). Every check reads the
table, so a session ended by one server process (or by `forgeflow token rotate`) is refused by all of them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from forgeflow.store.db import Store, now

TABLE = "studio_sessions"
LIFETIME_S = 7 * 24 * 3600
MAX_ID_CHARS = 256  # a cookie longer than any id this class makes is refused without hashing it


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _tag(admin_token: str) -> str:
    return hashlib.sha256(f"studio-session-token:{admin_token}".encode()).hexdigest()


class Sessions:
    def __init__(self, store: Store) -> None:
        self.store = store

    def start(self, admin_token: str, at: float | None = None) -> str:
        """A new session id for someone who signed in with `admin_token`, valid for LIFETIME_S while that token is the
        workspace's; sessions that have expired are cleared on the way."""
        at = time.time() if at is None else at
        self.store.execute(f"DELETE FROM {TABLE} WHERE expires_at < :t", {"t": int(at)})
        session_id = secrets.token_urlsafe(32)
        self.store.insert(TABLE, {"id_hash": _digest(session_id), "token_tag": _tag(admin_token), "created_at": now(),
                                  "expires_at": int(at + LIFETIME_S)})
        return session_id

    def valid(self, session_id: str | None, admin_token: str, at: float | None = None) -> bool:
        """True for an id `start` made under the current `admin_token` that has not expired or been ended."""
        if not session_id or len(session_id) > MAX_ID_CHARS:
            return False
        # The lookup is by the id's hash, so its timing tells nothing about the ids the table holds.
        row = self.store.get(TABLE, id_hash=_digest(session_id))
        return (row is not None and row["expires_at"] >= (time.time() if at is None else at)
                and hmac.compare_digest(row["token_tag"], _tag(admin_token)))

    def end(self, session_id: str | None) -> bool:
        """Sign one session out; False when there was no such session."""
        if not session_id or len(session_id) > MAX_ID_CHARS:
            return False
        return self.store.delete(TABLE, {"id_hash": _digest(session_id)}) > 0

    def end_all(self) -> int:
        """Sign everyone out (the admin token changed); how many sessions ended."""
        return self.store.execute(f"DELETE FROM {TABLE}")
