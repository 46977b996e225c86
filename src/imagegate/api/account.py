"""`/v1/account...`: the caller's own account, key and usage, for any valid key.

A key sees its account's rows only: the account filter comes from the key, never from the
query, so another account's key id in `?key=` simply matches nothing.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse

from ..accounts.keys import Caller, InvalidApiKey
from ..accounts.usage_export import usage_csv
from ..errors import NotFound
from . import deps
from .errors import error_responses
from .query import (
    CSV_DOWNLOAD,
    CSV_RESPONSES,
    UsageQuery,
    UtcOffset,
    usage_query,
    valid_parameters,
)

KEY_FIELDS = ("id", "name", "prefix", "is_admin", "enabled", "expires_at", "allowed_models",
              "allowed_ips", "rpm_limit", "concurrency_limit", "price_multiplier", "visible_mark",
              "created_at")
"""What a key is told about itself (not `account_id`: the account is beside it)."""

router = APIRouter(tags=["account"],
                   dependencies=[Depends(deps.caller), Depends(valid_parameters)],
                   responses=error_responses(401, 403))


@router.get("/account")
async def account(request: Request, who: Caller = Depends(deps.caller)) -> dict[str, Any]:
    """Who the key is: its account (balance, held, spent) and its own settings. `key` is null
    when the server checks no keys (`IMAGEGATE_AUTH=off`)."""
    admin = deps.service(request).admin
    key = None
    if who.key_id is not None:
        try:
            info = await admin.key(who.key_id)
        except NotFound:  # deleted since its lookup was cached
            raise InvalidApiKey("Incorrect API key provided.") from None
        key = {field: info[field] for field in KEY_FIELDS}
    return {"object": "account", "is_admin": who.is_admin,
            "account": await admin.account(who.account_id), "key": key}


@router.get("/account/usage", response_model=None, responses=CSV_RESPONSES)
async def usage(request: Request, who: Caller = Depends(deps.caller),
                rows: UsageQuery = Depends(usage_query),
                format: str = Query("json", pattern="^(json|csv)$"),
                limit: int = Query(1000, ge=1, le=10_000)) -> Any:
    """The account's newest `limit` usage rows, oldest first, as `/admin/usage` lists them."""
    service = deps.service(request)
    await service.flush_usage()  # include what is still queued
    found = await service.admin.usage(account=who.account_id, limit=limit, **rows.filters())
    if format == "csv":
        return PlainTextResponse(usage_csv(found), media_type="text/csv", headers=CSV_DOWNLOAD)
    return {"object": "list", "data": found}


@router.get("/account/usage/summary")
async def usage_summary(request: Request, who: Caller = Depends(deps.caller),
                        rows: UsageQuery = Depends(usage_query),
                        utc_offset_minutes: int = UtcOffset) -> dict[str, Any]:
    """The account's usage added up: in total, per day (the client's days, with
    `utc_offset_minutes`) and per model."""
    service = deps.service(request)
    await service.flush_usage()
    return await service.admin.usage_summary(account=who.account_id,
                                             utc_offset_minutes=utc_offset_minutes,
                                             **rows.filters())
