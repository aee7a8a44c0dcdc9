"""Secrets at rest: Fernet with a key file of mode 600 in the home. No system keyring."""

from __future__ import annotations

import hmac
import os
import secrets as _secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from forgeflow.errors import ForgeflowError


def write_private(path: Path, data: bytes) -> None:
    """Create or replace a file readable only by its owner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class SecretBox:
    """Encrypts and decrypts short strings with the workspace key."""

    def __init__(self, key_file: Path) -> None:
        if not key_file.exists():
            write_private(key_file, Fernet.generate_key())
        self._fernet = Fernet(key_file.read_bytes().strip())

    def encrypt(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ForgeflowError("a stored secret cannot be decrypted: the workspace key file changed") from None


def new_key(prefix: str = "") -> str:
    return prefix + _secrets.token_urlsafe(32)


def same(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two secrets."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode(), b.encode())
