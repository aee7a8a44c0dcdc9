"""The audit log: who changed what, when, from where, and how it ended. This module is the one writer of the
`audit_log` table.

A row holds the user and their role, the action as the method and route template (`POST
/api/endpoints/{name}/deployments`), the target's name, the client's address and the status answered. It never
holds a request body, a query string or a credential: what is recorded is chosen by the guard (api/guard.py) from
the route, never copied from the request's content.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from forgeflow.errors import InvalidInput
from forgeflow.store.db import Store, now

TABLE = "audit_log"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_AGO = re.compile(r"\s*(\d{1,6})\s*([smhdw])\s*")  # used with fullmatch
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def since_time(text: str, at: datetime | None = None) -> str:
    """`--since` as the ISO-8601 UTC time rows are kept in: a span back from now (`30m`, `1h`, `2d`, `1w`) or a
    time (`2026-05-01`, `2026-05-01T12:00:00Z`; without a zone it is UTC)."""
    match = _AGO.fullmatch(text or "")
    try:
        if match:
            moment = (at or datetime.now(timezone.utc)) - timedelta(**{_UNITS[match[2]]: int(match[1])})
        else:
            try:
                moment = datetime.fromisoformat(text.strip())
            except (ValueError, AttributeError):
                raise InvalidInput(f"since {text!r} is neither a span back from now (30m, 1h, 2d, 1w) nor an ISO "
                                   "time (2026-05-01T12:00:00Z)", field="since") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc).isoformat(timespec="seconds")
    except OverflowError:  # before year 1 or after 9999 once in UTC: no date Python (or the log) can hold
        raise InvalidInput(f"since {text!r} reaches outside the years 1 to 9999 (in UTC): give a later span or an "
                           "earlier time", field="since") from None


def _text(value: str | None, limit: int) -> str | None:
    """A value from a request (a path, a name) as the log keeps it: cut to its column, without control characters
    (NUL, which Postgres cannot store; a newline or an escape that would forge lines or colours where it is
    shown)."""
    return None if value is None else _CONTROL.sub("", value)[:limit]


class AuditLog:
    def __init__(self, store: Store) -> None:
        self.store = store

    def record(self, action: str, *, status: int | None, user: str | None = None, role: str | None = None,
               target: str | None = None, client: str | None = None, detail: dict | None = None) -> None:
        self.store.insert(TABLE, {"at": now(), "user_name": user, "role": None if role is None else str(role),
                                  "action": _text(action, 160), "target": _text(target, 512), "status": status,
                                  "client": _text(client, 128), "detail": detail})

    def list(self, since: str | None = None, user: str | None = None, limit: int = DEFAULT_LIMIT) -> list[dict]:
        """Rows newest first, from `since` on (see since_time), of one user or all, at most `limit`."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {limit!r}", field="limit")
        where, params = [], {"n": limit}
        if since is not None:
            where.append("at >= :since")
            params["since"] = since_time(since)
        if user is not None:
            where.append("user_name = :user")
            params["user"] = user
        sql = f"SELECT * FROM {TABLE}" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self.store.query(sql + " ORDER BY id DESC LIMIT :n", params)
        return [{"id": r["id"], "at": r["at"], "user": r["user_name"], "role": r["role"], "action": r["action"],
                 "target": r["target"], "status": r["status"], "client": r["client"], "detail": r["detail"]}
                for r in rows]
