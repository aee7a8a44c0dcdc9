"""Opening (and creating) a workspace: home folders, the store, secrets, the owner token (the admin token made at
init: the credential of the workspace owner, store/identity.py), users and their tokens, the audit log and Studio
sessions."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

from forgeflow.store.audit import AuditLog
from forgeflow.store.db import Store
from forgeflow.store.home import Paths
from forgeflow.store.identity import Identity
from forgeflow.store.secrets import SecretBox, new_key
from forgeflow.store.sessions import Sessions

ADMIN_TOKEN_SETTING = "admin_token"


@dataclass
class Workspace:
    paths: Paths

    @classmethod
    def open(cls, paths: Paths | None = None) -> "Workspace":
        """Open the workspace at FORGEFLOW_HOME, creating it on first use."""
        ws = cls(paths or Paths.current())
        ws.ensure()
        return ws

    def ensure(self) -> bool:
        """Create whatever is missing; returns True when the workspace was new."""
        created = not self.paths.db.exists()
        for d in (self.paths.root, self.paths.artifacts, self.paths.base_models, self.paths.jobs, self.paths.mlruns, self.paths.logs):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.paths.root, 0o700)
        if self.store.get_setting(ADMIN_TOKEN_SETTING) is None:
            self.store.set_setting(ADMIN_TOKEN_SETTING, self.secrets.encrypt(new_key("ffa_")))
        self.identity.ensure_owner()
        return created

    @cached_property
    def store(self) -> Store:
        return Store(self.paths.db_url)

    @cached_property
    def secrets(self) -> SecretBox:
        return SecretBox(self.paths.secret_key)

    @cached_property
    def sessions(self) -> Sessions:
        return Sessions(self.store)

    @cached_property
    def identity(self) -> Identity:
        return Identity(self.store)

    @cached_property
    def audit(self) -> AuditLog:
        return AuditLog(self.store)

    def admin_token(self) -> str:
        return self.secrets.decrypt(self.store.get_setting(ADMIN_TOKEN_SETTING) or "")

    def rotate_admin_token(self) -> dict:
        """A new owner token: the old one and every Studio session signed in with it stop working at once (in every
        server process: they read the token and the sessions from the store on each request). Personal access
        tokens and their sessions are not touched."""
        token = new_key("ffa_")
        self.store.set_setting(ADMIN_TOKEN_SETTING, self.secrets.encrypt(token))
        return {"token": token, "sessions_ended": self.sessions.end_owner_sessions()}
