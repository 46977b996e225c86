"""`/admin/...`: accounts, keys and usage, for admin keys only (user keys get 403)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from pydantic_core import PydanticCustomError

from ..accounts.admin import (
    MAX_ALLOW_LIST,
    MAX_CONCURRENCY,
    MAX_ID,
    MAX_MONEY_MICROS,
    MAX_MULTIPLIER_CHARS,
    MAX_NAME_CHARS,
    MAX_NOTE_CHARS,
    MAX_RPM,
    Admin,
)
from ..accounts.usage_export import usage_csv
from ..errors import InvalidRequest
from ..pricing import parse_money
from ..protocol.wire import (
    MAX_MODEL_CHARS,
    MAX_WORD_CHARS,
    Instant,
    ModelName,
    WireModel,
    check_text,
    either,
)
from . import deps
from .errors import error_responses


async def _valid_parameters(request: Request) -> None:
    """Path and query values are text for the database too: no NUL (or lone surrogate)."""
    for where, values in (("path", request.path_params), ("query", request.query_params)):
        for name, value in values.items():
            try:
                check_text(value, name)
            except PydanticCustomError as exc:
                raise InvalidRequest(exc.message(), param=name) from None


router = APIRouter(prefix="/admin", tags=["admin"],
                   dependencies=[Depends(deps.admin), Depends(_valid_parameters)],
                   responses=error_responses(401, 403, 404))


def _admin(request: Request) -> Admin:
    return deps.service(request).admin


async def _forget_cached_key(request: Request, key_id: int) -> None:
    await deps.service(request).forget_cached_key(key_id)


AccountName = Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME_CHARS)]
Multiplier = Annotated[StrictStr, Field(min_length=1, max_length=MAX_MULTIPLIER_CHARS)]


class AccountIn(WireModel):
    model_config = ConfigDict(extra="forbid")

    name: AccountName
    unlimited: StrictBool = False
    price_multiplier: Multiplier = "1"


def _amount_type(value: Any) -> Any:
    """A decimal string or a JSON number; `true` is not 1."""
    if value is None or isinstance(value, str) or (
            isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    raise PydanticCustomError("string_type", "Input should be a valid string")


class TopUpIn(WireModel):
    model_config = ConfigDict(extra="forbid")

    amount: Annotated[str | int | float | None, BeforeValidator(_amount_type)] = None
    """In currency units, as an exact decimal string ('12.50'); or use amount_micros."""
    amount_micros: Annotated[StrictInt, Field(ge=-MAX_MONEY_MICROS, le=MAX_MONEY_MICROS)] | None \
        = None
    note: Annotated[StrictStr, Field(max_length=MAX_NOTE_CHARS)] | None = None


class KeyIn(WireModel):
    model_config = ConfigDict(extra="forbid")

    account: either(  # type: ignore[valid-type]
        AccountName, Annotated[StrictInt, Field(ge=1, le=MAX_ID)])
    """The paying account's name, or its id as a number (a string of digits is looked up as
    an id too)."""
    name: AccountName
    is_admin: StrictBool = False
    expires_at: Instant | None = None
    allowed_models: Annotated[list[ModelName], Field(max_length=MAX_ALLOW_LIST)] | None = None
    allowed_ips: Annotated[list[Annotated[StrictStr, Field(max_length=MAX_WORD_CHARS)]],
                           Field(max_length=MAX_ALLOW_LIST)] | None = None
    rpm_limit: Annotated[StrictInt, Field(ge=1, le=MAX_RPM)] | None = None
    concurrency_limit: Annotated[StrictInt, Field(ge=1, le=MAX_CONCURRENCY)] | None = None
    price_multiplier: Multiplier | None = None


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
        micros = body.amount_micros if body.amount_micros is not None else \
            parse_money(body.amount or "")
    except (ArithmeticError, ValueError):
        raise InvalidRequest("`amount` must be a decimal number.", param="amount") from None
    return await _admin(request).topup(ref, micros, body.note)


@router.post("/keys", status_code=201)
async def create_key(body: KeyIn, request: Request) -> dict[str, Any]:
    created = await _admin(request).create_key(**body.model_dump())
    return {**created.info, "key": created.key}


@router.get("/keys")
async def list_keys(request: Request,
                    account: str | None = Query(None, max_length=MAX_NAME_CHARS)
                    ) -> dict[str, Any]:
    return {"object": "list", "data": await _admin(request).keys(account)}


@router.post("/keys/{key_id}/disable", responses=error_responses(409))
async def disable_key(key_id: int, request: Request) -> dict[str, Any]:
    info = await _admin(request).set_key_enabled(key_id, False)
    await _forget_cached_key(request, key_id)
    return info


@router.post("/keys/{key_id}/enable")
async def enable_key(key_id: int, request: Request) -> dict[str, Any]:
    info = await _admin(request).set_key_enabled(key_id, True)
    await _forget_cached_key(request, key_id)
    return info


@router.delete("/keys/{key_id}", responses=error_responses(409))
async def delete_key(key_id: int, request: Request) -> dict[str, Any]:
    await _admin(request).delete_key(key_id)
    await _forget_cached_key(request, key_id)
    return {"id": key_id, "deleted": True}


@router.get("/replicas", responses=error_responses(503))
async def replicas(request: Request) -> dict[str, Any]:
    """Every live gateway replica's admission counts: its local engine's queue per model and
    its relayed requests in flight per model (each replica posts its own to Redis; without
    Redis, only this one)."""
    return {"object": "list", "data": await deps.service(request).replicas()}


@router.get("/usage", response_model=None, responses={200: {
    "description": "Usage records, oldest first: JSON, or CSV with `format=csv`.",
    "content": {"application/json": {"schema": {"type": "object"}},
                "text/csv": {"schema": {"type": "string"}}}}})
async def usage(request: Request, key: int | None = Query(None, ge=1, le=MAX_ID),
                model: str | None = Query(None, max_length=MAX_MODEL_CHARS),
                account: str | None = Query(None, max_length=MAX_NAME_CHARS),
                since: Instant | None = None,
                format: str = Query("json", pattern="^(json|csv)$"),
                limit: int = Query(10_000, ge=1, le=100_000)) -> Any:
    await deps.service(request).flush_usage()  # include what is still queued
    rows = await _admin(request).usage(key_id=key, model=model, account=account, since=since,
                                       limit=limit)
    if format == "csv":
        return PlainTextResponse(usage_csv(rows), media_type="text/csv")
    return {"object": "list", "data": rows}
