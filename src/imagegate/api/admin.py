"""`/admin/...`: accounts, keys and usage, for admin keys only (user keys get 403)."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from ..accounts.admin import USAGE_COLUMNS, Admin
from ..errors import InvalidRequest
from ..pricing import parse_money
from . import deps

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(deps.admin)])


def _admin(request: Request) -> Admin:
    return request.app.state.service.accounts.admin


def _forget_cached_keys(request: Request) -> None:
    request.app.state.service.accounts.authenticator.forget()


class AccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    unlimited: bool = False
    price_multiplier: str = "1"


class TopUpIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: str | int | float | None = None
    """In currency units, as an exact decimal string ('12.50'); or use amount_micros."""
    amount_micros: int | None = None
    note: str | None = None


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account: str | int
    name: str = Field(min_length=1, max_length=200)
    is_admin: bool = False
    expires_at: datetime | None = None
    allowed_models: list[str] | None = None
    allowed_ips: list[str] | None = None
    rpm_limit: int | None = None
    concurrency_limit: int | None = None
    price_multiplier: str | None = None


@router.post("/accounts", status_code=201)
async def create_account(body: AccountIn, request: Request) -> dict[str, Any]:
    return await _admin(request).create_account(
        body.name, unlimited=body.unlimited, price_multiplier=body.price_multiplier)


@router.get("/accounts")
async def list_accounts(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": await _admin(request).accounts()}


@router.get("/accounts/{ref}")
async def get_account(ref: str, request: Request) -> dict[str, Any]:
    return await _admin(request).account(ref)


@router.post("/accounts/{ref}/topup")
async def topup(ref: str, body: TopUpIn, request: Request) -> dict[str, Any]:
    if (body.amount is None) == (body.amount_micros is None):
        raise InvalidRequest("Give exactly one of `amount` and `amount_micros`.", param="amount")
    try:
        micros = body.amount_micros if body.amount is None else parse_money(body.amount)
    except (ArithmeticError, ValueError):
        raise InvalidRequest("`amount` must be a decimal number.", param="amount") from None
    return await _admin(request).topup(ref, micros, body.note)


@router.post("/keys", status_code=201)
async def create_key(body: KeyIn, request: Request) -> dict[str, Any]:
    created = await _admin(request).create_key(**body.model_dump())
    return {**created.info, "key": created.key}


@router.get("/keys")
async def list_keys(request: Request, account: str | None = None) -> dict[str, Any]:
    return {"object": "list", "data": await _admin(request).keys(account)}


@router.post("/keys/{key_id}/disable")
async def disable_key(key_id: int, request: Request) -> dict[str, Any]:
    info = await _admin(request).set_key_enabled(key_id, False)
    _forget_cached_keys(request)
    return info


@router.post("/keys/{key_id}/enable")
async def enable_key(key_id: int, request: Request) -> dict[str, Any]:
    info = await _admin(request).set_key_enabled(key_id, True)
    _forget_cached_keys(request)
    return info


@router.delete("/keys/{key_id}")
async def delete_key(key_id: int, request: Request) -> dict[str, Any]:
    await _admin(request).delete_key(key_id)
    _forget_cached_keys(request)
    return {"id": key_id, "deleted": True}


@router.get("/usage", response_model=None)
async def usage(request: Request, key: int | None = None, model: str | None = None,
                account: str | None = None, since: datetime | None = None,
                format: str = Query("json", pattern="^(json|csv)$"),
                limit: int = Query(10_000, ge=1, le=100_000)) -> Any:
    await request.app.state.service.accounts.usage.flush()  # include what is still queued
    rows = await _admin(request).usage(key_id=key, model=model, account=account, since=since,
                                       limit=limit)
    if format == "csv":
        return PlainTextResponse(usage_csv(rows), media_type="text/csv")
    return {"object": "list", "data": rows}


def usage_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(USAGE_COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
