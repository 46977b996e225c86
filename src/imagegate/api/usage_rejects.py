"""`GET /admin/usage/rejects`: usage rows the database refused, set aside for the operator
(accounts/usage_rows.py). Admin keys only."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from . import deps

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(deps.admin)])


class UsageRejectOut(BaseModel):
    id: int
    created_at: datetime
    request_id: str | None
    row: str
    """The usage row as it was to be written, as ASCII JSON text (exact: it may hold what no
    column can, such as a lone surrogate, escaped)."""
    error: str


class UsageRejectList(BaseModel):
    object: str = "list"
    data: list[UsageRejectOut]


@router.get("/usage/rejects", response_model=UsageRejectList)
async def usage_rejects(request: Request,
                        limit: int = Query(100, ge=1, le=10_000)) -> dict[str, Any]:
    """The newest usage rows that could not be stored, newest first."""
    return {"object": "list", "data": await deps.service(request).usage_rejects(limit)}
