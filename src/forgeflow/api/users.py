"""Users and their roles (owner only to change), and `/api/me`: who the caller is."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from forgeflow.api.security import OWNER, READER, audit_detail, audit_target, current, services
from forgeflow.errors import Conflict
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
    audit_detail(request, role=user["role"])
    token = ff.ws.identity.create_token(user["name"], expires_in_days=body.expires_in_days,
                                        description="first token", created_by=by)
    audit_detail(request, new_token_id=token["id"], expires_at=token["expires_at"])
    return token | {"created_at": user["created_at"], "created_by": by}


@router.patch("/users/{name}", dependencies=OWNER)
def update_user(name: str, body: UserUpdate, request: Request, ff=Depends(services)) -> dict:
    """A new role, in force from the user's next request (their tokens and sessions take it at once)."""
    before, after = ff.ws.identity.set_role(name, body.role)
    audit_detail(request, role=after["role"], previous_role=before)
    return after


@router.delete("/users/{name}", dependencies=OWNER)
def delete_user(name: str, request: Request, ff=Depends(services)) -> dict:
    """Remove a user: every token of theirs is revoked, and every Studio session signed in with one ends. Refused
    while an endpoint still lists the user in its allowed_users: a user made later under the same name would
    otherwise get that access back."""
    ff.ws.identity.user(name)
    listing = [e["name"] for e in ff.endpoints.list_endpoints() if name in (e.get("allowed_users") or [])]
    if listing:
        raise Conflict(f"user {name!r} is still allowed to call endpoint(s) {', '.join(listing)}: take them off "
                       f"first (forgeflow online-endpoint update --name ENDPOINT --allowed-users USER,... or "
                       f"--clear-allowed-users), then remove the user", field="name")
    revoked = ff.ws.identity.delete_user(name)
    audit_detail(request, tokens_revoked=revoked)
    return {"deleted": name, "tokens_revoked": revoked}
