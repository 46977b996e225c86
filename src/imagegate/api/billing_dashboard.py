"""`/v1/dashboard/billing/...`: OpenAI's old dashboard endpoints, as one-api and new-api serve
them to chat front ends (ChatGPT-Next-Web and its forks) that show the user's remaining credit.
Called with the user's own key; amounts are JSON numbers in currency units (subscription) and
cents (usage), as those front ends read them, not micro-units.
"""

from __future__ import annotations

from datetime import date, datetime, time, timezone
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from ..accounts.keys import Caller
from ..errors import InvalidRequest
from . import deps
from .errors import error_responses

UNLIMITED = 100_000_000
"""What an unlimited account shows as its limit: one-api's figure for unlimited quota."""
MICROS_PER_UNIT = 1_000_000
MICROS_PER_CENT = 10_000
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"

router = APIRouter(tags=["billing"], dependencies=[Depends(deps.caller)],
                   responses=error_responses(401, 403))


@router.get("/dashboard/billing/subscription")
async def subscription(request: Request, who: Caller = Depends(deps.caller)) -> dict[str, Any]:
    """The limits are what the account may still spend: its balance, which already excludes
    what running requests hold (never below 0). `access_until`: when the key expires (Unix
    seconds; 0 when it does not)."""
    admin = deps.service(request).admin
    account = await admin.account(who.account_id)
    if account["unlimited"]:
        left: float = UNLIMITED
    else:
        left = max(account["balance_micros"], 0) / MICROS_PER_UNIT
    access_until = 0
    if who.key_id is not None:
        expires = (await admin.key(who.key_id))["expires_at"]
        access_until = int(expires.timestamp()) if expires is not None else 0
    return {"object": "billing_subscription", "has_payment_method": True,
            "soft_limit_usd": left, "hard_limit_usd": left, "system_hard_limit_usd": left,
            "access_until": access_until}


@router.get("/dashboard/billing/usage")
async def usage(request: Request, who: Caller = Depends(deps.caller),
                start_date: str | None = Query(None, pattern=DATE_PATTERN,
                                               description="YYYY-MM-DD (UTC), inclusive"),
                end_date: str | None = Query(None, pattern=DATE_PATTERN,
                                             description="YYYY-MM-DD (UTC), exclusive")
                ) -> dict[str, Any]:
    """What the account was charged from `start_date` until `end_date`, in cents."""
    service = deps.service(request)
    await service.flush_usage()
    total = await service.admin.usage_totals(account=who.account_id,
                                             since=_midnight(start_date, "start_date"),
                                             until=_midnight(end_date, "end_date"))
    return {"object": "list", "total_usage": total["cost_micros"] / MICROS_PER_CENT}


def _midnight(day: str | None, param: str) -> datetime | None:
    """The start of `day` (YYYY-MM-DD) in UTC; 400 for a date that does not exist."""
    if day is None:
        return None
    try:
        return datetime.combine(date.fromisoformat(day), time(), tzinfo=timezone.utc)
    except ValueError:
        raise InvalidRequest(f"`{param}` must be a date as YYYY-MM-DD.", param=param) from None
