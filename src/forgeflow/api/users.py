"""Users and their roles (owner only to change), and `/api/me`: who the caller is."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from forgeflow.api.security import OWNER, READER, audit_target, current, services
from forgeflow.store.identity import DEFAULT_EXPIRY_DAYS, MAX_EXPIRY_DAYS

router = APIRouter(tags=["users"])


class UserCreate(BaseModel, extra="forbid"):
    name: str = Field(max_length=64, description="Up to 64 letters, digits, '.', '_', '@' and '-', a letter first.")
    role: str = Field(description="reader, contributor or owner.")
    expires_in_days: int = Field(DEFAULT_EXPIRY_DAYS, ge=1, le=MAX_EXPIRY_DAYS,
                                 description="Days until the user's first token stops working.")


class UserUpdate(BaseModel, extra="forbid"):
    role: str = Field(description="reader, contributor or owner.")


@router.get("/me", dependencies=READER)
def me(request: Request) -> dict:
    """The caller: user, role, the personal token used (null: the owner token) and when it expires."""
    return current(request).view()


@router.get("/users", dependencies=READER)
def list_users(ff=Depends(services)) -> list[dict]:
    return ff.ws.identity.users()


@router.get("/users/{name}", dependencies=READER)
def show_user(name: str, ff=Depends(services)) -> dict:
    return ff.ws.identity.user(name)


@router.post("/users", status_code=201, dependencies=OWNER)
def create_user(body: UserCreate, request: Request, ff=Depends(services)) -> dict:
    """A new user and their first token: `token` is its secret, shown this once."""
    by = current(request).user
    audit_target(request, body.name)
    user = ff.ws.identity.create_user(body.name, body.role, created_by=by)
    token = ff.ws.identity.create_token(user["name"], expires_in_days=body.expires_in_days,
                                        description="first token", created_by=by)
    return token | {"created_at": user["created_at"], "created_by": by}


@router.patch("/users/{name}", dependencies=OWNER)
def update_user(name: str, body: UserUpdate, ff=Depends(services)) -> dict:
    """A new role, in force from the user's next request (their tokens and sessions take it at once)."""
    return ff.ws.identity.set_role(name, body.role)


@router.delete("/users/{name}", dependencies=OWNER)
def delete_user(name: str, ff=Depends(services)) -> dict:
    """Remove a user: every token of theirs is revoked, and every Studio session signed in with one ends."""
    return {"deleted": name, "tokens_revoked": ff.ws.identity.delete_user(name)}
