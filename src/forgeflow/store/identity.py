"""People and their credentials: users with a role, and personal access tokens. This module is the one writer of
the `users` and `access_tokens` tables.

Roles are Azure's built-ins, ordered: a reader sees everything but secrets and changes nothing, a contributor
creates and runs jobs, models, endpoints, flows and connections, an owner also manages users, roles and the
workspace's keys.

A personal access token is `ffp_<id>_<secret>` (the id names the token in lists and `token revoke`; the secret is
32 random bytes). Only its SHA-256 is stored and it is looked up by that hash, so a copy of the database
authenticates nobody and the lookup's timing says nothing about stored tokens. It is shown once, when made.

The owner token made at `init` (kept encrypted in settings, see store/workspace.py) is the credential of the user
OWNER_USER, the workspace owner, whose row `ensure_owner` keeps: that user cannot be deleted or demoted, so the
workspace always has an owner. Every check reads the tables: a token revoked or a role changed by one server is
seen by every server at the next request (no cache). A check is one query: the token joined with its user
(PRINCIPAL_FROM/PRINCIPAL_COLUMNS, which store/sessions.py joins to a session too).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum

from forgeflow.errors import Conflict, InvalidInput, NotFound
from forgeflow.store.db import Store, now
from forgeflow.store.secrets import same

USERS = "users"
TOKENS = "access_tokens"
OWNER_USER = "owner"
TOKEN_PREFIX = "ffp_"
MAX_TOKEN_CHARS = 256  # a presented token longer than any this module makes is refused without hashing it
DEFAULT_EXPIRY_DAYS = 90
MAX_EXPIRY_DAYS = 365  # no token lives forever: a script's token is renewed at least once a year
_USER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._@-]{0,63}")
# What a principal is read from, in one query: a token `t` with its user `u` (see `live`).
PRINCIPAL_FROM = f"{TOKENS} t JOIN {USERS} u ON u.name = t.user_name"
PRINCIPAL_COLUMNS = ("t.id AS token_id, t.expires_at AS token_expires_at, t.revoked_at AS token_revoked_at, "
                     "u.name AS user_name, u.role AS user_role")
# A token as lists show it, with its user's role (None once the user is removed).
_TOKEN_VIEW = f"SELECT t.*, u.role AS role FROM {TOKENS} t LEFT JOIN {USERS} u ON u.name = t.user_name"


class Role(StrEnum):
    """A user's role (Azure's built-in roles), lowest first."""

    READER = "reader"
    CONTRIBUTOR = "contributor"
    OWNER = "owner"

    def covers(self, needed: "Role") -> bool:
        """Whether this role may do what `needed` may (an owner may do what a reader may)."""
        order = list(Role)
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True)
class Principal:
    """Who made a request: the user, their role now, and the personal token they used (None: the owner token)."""

    user: str
    role: Role
    token_id: str | None = None
    expires_at: int | None = None

    def view(self) -> dict:
        return {"user": self.user, "role": str(self.role), "token_id": self.token_id, "expires_at": self.expires_at,
                "expires_at_utc": _utc(self.expires_at)}


def check_role(role: str, field: str = "role") -> Role:
    try:
        return Role(role)
    except ValueError:
        raise InvalidInput(f"role {role!r} is not one of {', '.join(Role)}", field=field) from None


def check_user_name(name: str, field: str = "name") -> str:
    if not isinstance(name, str) or not _USER_NAME.fullmatch(name):
        raise InvalidInput(f"invalid user name {name!r}: use up to 64 letters, digits, '.', '_', '@' and '-', "
                           "starting with a letter", field=field)
    return name


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _utc(seconds: int | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def _token_view(row: dict) -> dict:
    """A token as lists show it: never its secret, nor its hash."""
    return {"id": row["id"], "user": row["user_name"], "role": row["role"], "description": row["description"],
            "created_at": row["created_at"], "created_by": row["created_by"], "expires_at": row["expires_at"],
            "expires_at_utc": _utc(row["expires_at"]), "revoked_at": row["revoked_at"]}


class Identity:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- users -------------------------------------------------------------------
    def ensure_owner(self) -> None:
        """The workspace owner's row (the user the owner token made at init signs in as)."""
        if self.store.get(USERS, name=OWNER_USER) is None:
            try:
                self.store.insert(USERS, {"name": OWNER_USER, "role": Role.OWNER, "created_at": now(),
                                          "created_by": None})
            except Conflict:
                pass  # another server made it first

    def user(self, name: str) -> dict:
        row = self.store.get(USERS, name=name)
        if row is None:
            raise NotFound(f"no user named {name!r} (see: forgeflow user list)", field="name")
        return row

    def users(self) -> list[dict]:
        return self.store.select(USERS, order_by="name")

    def existing(self, names: Iterable[str]) -> set[str]:
        """Which of `names` are users, in one query."""
        return {row["name"] for row in self.store.select_in(USERS, "name", names)}

    def create_user(self, name: str, role: str, created_by: str | None) -> dict:
        check_user_name(name)
        self.store.insert(USERS, {"name": name, "role": check_role(role), "created_at": now(),
                                  "created_by": created_by})
        return self.user(name)

    def set_role(self, name: str, role: str) -> tuple[str, dict]:
        """Give a user a new role: the role they had, and their row now."""
        new = check_role(role)
        row = self.user(name)
        if name == OWNER_USER and new != Role.OWNER:
            raise Conflict(f"user {OWNER_USER!r} holds the workspace's owner token (forgeflow token show) and stays "
                           "an owner: it is the owner the workspace always has", field="role")
        self.store.update(USERS, {"name": name}, {"role": new})
        return row["role"], row | {"role": str(new)}

    def delete_user(self, name: str) -> int:
        """Remove a user; every token of theirs is revoked (and so every Studio session signed in with one).
        How many tokens were revoked."""
        self.user(name)
        if name == OWNER_USER:
            raise Conflict(f"user {OWNER_USER!r} holds the workspace's owner token and cannot be removed: the "
                           "workspace always has an owner (rotate that token with: forgeflow token rotate)",
                           field="name")
        revoked = self.store.execute(f"UPDATE {TOKENS} SET revoked_at = :t WHERE user_name = :u AND revoked_at IS NULL",
                                     {"t": now(), "u": name})
        self.store.delete(USERS, {"name": name})
        return revoked

    # -- tokens ------------------------------------------------------------------
    def create_token(self, user: str, *, expires_in_days: int = DEFAULT_EXPIRY_DAYS, description: str | None = None,
                     created_by: str | None = None, at: float | None = None) -> dict:
        """A new token for `user`: its secret, shown this once, with its id and expiry."""
        row = self.user(user)
        if isinstance(expires_in_days, bool) or not isinstance(expires_in_days, int) \
                or not 1 <= expires_in_days <= MAX_EXPIRY_DAYS:
            raise InvalidInput(f"expires_in_days must be a whole number of days from 1 to {MAX_EXPIRY_DAYS}, got "
                               f"{expires_in_days!r}", field="expires_in_days")
        at = time.time() if at is None else at
        token_id = secrets.token_hex(8)
        token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        self.store.insert(TOKENS, {"id": token_id, "user_name": user, "token_hash": _digest(token),
                                   "description": description, "created_at": now(), "created_by": created_by,
                                   "expires_at": int(at + expires_in_days * 86400), "revoked_at": None})
        return {"token": token} | self.token(token_id) | {"role": row["role"]}

    def token(self, token_id: str) -> dict:
        rows = [] if _unstorable(token_id) else self.store.query(f"{_TOKEN_VIEW} WHERE t.id = :id", {"id": token_id})
        if not rows:
            raise NotFound(f"no token with id {token_id!r} (see: forgeflow token list)", field="id")
        return _token_view(rows[0])

    def tokens(self, user: str | None = None) -> list[dict]:
        """Tokens (all, or one user's), oldest first; revoked and expired ones too, marked as such."""
        if user and _unstorable(user):
            return []
        where = " WHERE t.user_name = :u" if user else ""
        rows = self.store.query(f"{_TOKEN_VIEW}{where} ORDER BY t.created_at, t.id", {"u": user} if user else None)
        return [_token_view(row) for row in rows]

    def revoke(self, token_id: str) -> dict:
        """Revoke a token: it is refused at the next request on every server, with every session signed in with
        it. Revoking a revoked token changes nothing."""
        if not _unstorable(token_id):
            self.store.execute(f"UPDATE {TOKENS} SET revoked_at = :t WHERE id = :id AND revoked_at IS NULL",
                               {"t": now(), "id": token_id})
        return self.token(token_id)

    # -- authentication --------------------------------------------------------------
    def authenticate(self, token: str | None, owner_token: Callable[[], str],
                     at: float | None = None) -> Principal | None:
        """The principal a presented bearer token stands for, or None. A personal token is looked up by its hash;
        anything else is compared in constant time with the owner token (read, and decrypted, only then)."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        if token.startswith(TOKEN_PREFIX):
            return self.personal(token, at)
        return self.owner() if same(token, owner_token()) else None

    def personal(self, token: str | None, at: float | None = None) -> Principal | None:
        """The principal of a live personal access token, looked up by its hash; None for anything else."""
        if not token or len(token) > MAX_TOKEN_CHARS or not token.startswith(TOKEN_PREFIX):
            return None
        rows = self.store.query(f"SELECT {PRINCIPAL_COLUMNS} FROM {PRINCIPAL_FROM} WHERE t.token_hash = :h",
                                {"h": _digest(token)})
        return live(rows[0] if rows else None, at)

    def owner(self) -> Principal:
        return Principal(OWNER_USER, Role.OWNER)


def live(row: dict | None, at: float | None = None) -> Principal | None:
    """The principal of a row read with PRINCIPAL_COLUMNS, while its token is live: not revoked, not expired, its
    user not removed (an outer join leaves the user's columns empty)."""
    if row is None or row["user_name"] is None or row["token_revoked_at"] is not None:
        return None
    expires_at = row["token_expires_at"]
    if expires_at is not None and expires_at <= (time.time() if at is None else at):
        return None
    return Principal(row["user_name"], Role(row["user_role"]), row["token_id"], expires_at)


def _unstorable(value: str) -> bool:
    """An id holding a NUL character names no row (none can hold one), and the store refuses to send it."""
    return "\x00" in value
