"""The audit log, read: who changed what, when, from where (store/audit.py). It holds no secrets, so a reader may
read it."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from forgeflow.api.security import READER, services
from forgeflow.store.audit import DEFAULT_LIMIT, MAX_LIMIT

router = APIRouter(tags=["users"])


@router.get("/audit", dependencies=READER)
def list_audit(since: str | None = Query(None, max_length=64, description="A span back from now (30m, 1h, 2d, 1w) "
                                         "or an ISO time (2026-05-01T12:00:00Z)."),
               user: str | None = Query(None, max_length=64, description="One user's rows."),
               limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="Newest rows first, at most this many."),
               ff=Depends(services)) -> list[dict]:
    return ff.ws.audit.list(since=since, user=user, limit=limit)
