"""`/admin/...`: accounts, keys and usage, for admin keys only (user keys get 403)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from ..accounts.admin import (
    KEY_FIELDS,
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
    MAX_WORD_CHARS,
    Instant,
    ModelName,
    WireModel,
    either,
)
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

router = APIRouter(prefix="/admin", tags=["admin"],
                   dependencies=[Depends(deps.admin), Depends(valid_parameters)],
                   responses=error_responses(401, 403, 404))


def _admin(request: Request) -> Admin:
    return deps.service(request).admin


async def _forget_cached_key(request: Request, key_id: int) -> None:
    await deps.service(request).forget_cached_key(key_id)


AccountName = Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME_CHARS)]
Multiplier = Annotated[StrictStr, Field(min_length=1, max_length=MAX_MULTIPLIER_CHARS)]
LabelProducer = Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME_CHARS)]
# A key's limits, shared by creation (KeyIn) and edits (KeyPatch).
AllowedModels = Annotated[list[ModelName], Field(max_length=MAX_ALLOW_LIST)]
AllowedIps = Annotated[list[Annotated[StrictStr, Field(max_length=MAX_WORD_CHARS)]],
                       Field(max_length=MAX_ALLOW_LIST)]
RpmLimit = Annotated[StrictInt, Field(ge=1, le=MAX_RPM)]
ConcurrencyLimit = Annotated[StrictInt, Field(ge=1, le=MAX_CONCURRENCY)]


class AccountIn(WireModel):
    model_config = ConfigDict(extra="forbid")

    name: AccountName
    unlimited: StrictBool = False
    price_multiplier: Multiplier = "1"
    label_producer: LabelProducer | None = None
    """`ContentProducer` of this account's AI-content labels; unset: the server's."""
    visible_mark: StrictBool | None = None
    """The visible AI mark on this account's images; unset: the server's default."""


def _amount_type(value: Any) -> Any:
    """A decimal string or a JSON number; `true` is not 1."""
    if value is None or isinstance(value, str) or (
            isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    raise PydanticCustomError("string_type", "Input should be a valid string")


def _not_null(kind: Any) -> WithJsonSchema:
    """The schema of an optional field that may be left out but not sent as `null`."""
    return WithJsonSchema(TypeAdapter(kind).json_schema())


class AccountPatch(WireModel):
    """What may change on an account; at least one field."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    # Neither can be cleared: `null` is refused (update_account), and not offered in the schema.
    price_multiplier: Annotated[Multiplier | None, _not_null(Multiplier)] = None
    unlimited: Annotated[StrictBool | None, _not_null(StrictBool)] = None
    # These two may be cleared (`null`): back to the server's settings.
    label_producer: LabelProducer | None = None
    visible_mark: StrictBool | None = None


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
    allowed_models: AllowedModels | None = None
    allowed_ips: AllowedIps | None = None
    rpm_limit: RpmLimit | None = None
    concurrency_limit: ConcurrencyLimit | None = None
    price_multiplier: Multiplier | None = None
    visible_mark: StrictBool | None = None
    """The visible AI mark on this key's images; unset: as its account says."""


class KeyPatch(WireModel):
    """What may change on a key: a field sent as `null` is cleared, one left out is kept."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    name: Annotated[AccountName | None, _not_null(AccountName)] = None  # every key has one
    expires_at: Instant | None = None
    allowed_models: AllowedModels | None = None
    allowed_ips: AllowedIps | None = None
    rpm_limit: RpmLimit | None = None
    concurrency_limit: ConcurrencyLimit | None = None
    price_multiplier: Multiplier | None = None
    visible_mark: StrictBool | None = None


def _one_change(body: WireModel) -> dict[str, Any]:
    """The fields the body sent (a `null` included); 400 for an empty one."""
    sent = {name: getattr(body, name) for name in body.model_fields_set}
    if not sent:
        fields = ", ".join(f"`{name}`" for name in type(body).model_fields)
        raise InvalidRequest(f"Send at least one of {fields}.")
    return sent


@router.post("/accounts", status_code=201)
async def create_account(body: AccountIn, request: Request) -> dict[str, Any]:
    return await _admin(request).create_account(
        body.name, unlimited=body.unlimited, price_multiplier=body.price_multiplier,
        label_producer=body.label_producer, visible_mark=body.visible_mark)


@router.get("/accounts")
async def list_accounts(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": await _admin(request).accounts()}


@router.get("/accounts/{ref}")
async def get_account(ref: str, request: Request) -> dict[str, Any]:
    return await _admin(request).account(ref)


@router.patch("/accounts/{ref}")
async def update_account(ref: str, body: AccountPatch, request: Request) -> dict[str, Any]:
    """Change an account's price multiplier or `unlimited`; its keys' next requests see it."""
    sent = _one_change(body)
    if "price_multiplier" in sent and body.price_multiplier is None:
        raise InvalidRequest("An account's `price_multiplier` cannot be removed; send \"1\".",
                             param="price_multiplier")
    if "unlimited" in sent and body.unlimited is None:
        raise InvalidRequest("`unlimited` must be true or false.", param="unlimited")
    labels: dict[str, Any] = {field: sent[field] for field in ("label_producer", "visible_mark")
                              if field in sent}
    account = await _admin(request).update_account(
        ref, price_multiplier=body.price_multiplier, unlimited=body.unlimited, labels=labels)
    await deps.service(request).forget_cached_keys()
    return account


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


@router.get("/keys/{key_id}")
async def get_key(key_id: int, request: Request) -> dict[str, Any]:
    return await _admin(request).key(key_id)


@router.patch("/keys/{key_id}", responses=error_responses(409))
async def update_key(key_id: int, body: KeyPatch, request: Request) -> dict[str, Any]:
    """Change a key's settings (`null` clears one); its next request sees the change."""
    changes = _one_change(body)
    assert set(changes) <= set(KEY_FIELDS)
    info = await _admin(request).update_key(key_id, changes)
    await _forget_cached_key(request, key_id)
    return info


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


@router.get("/usage", response_model=None, responses=CSV_RESPONSES)
async def usage(request: Request, rows: UsageQuery = Depends(usage_query),
                account: str | None = Query(None, max_length=MAX_NAME_CHARS),
                format: str = Query("json", pattern="^(json|csv)$"),
                limit: int = Query(10_000, ge=1, le=100_000)) -> Any:
    await deps.service(request).flush_usage()  # include what is still queued
    found = await _admin(request).usage(account=account, limit=limit, **rows.filters())
    if format == "csv":
        return PlainTextResponse(usage_csv(found), media_type="text/csv", headers=CSV_DOWNLOAD)
    return {"object": "list", "data": found}


@router.get("/usage/summary")
async def usage_summary(request: Request, rows: UsageQuery = Depends(usage_query),
                        account: str | None = Query(None, max_length=MAX_NAME_CHARS),
                        utc_offset_minutes: int = UtcOffset) -> dict[str, Any]:
    """Every account's usage (or one's, with `account`) added up: in total, per day, per model
    and per account."""
    await deps.service(request).flush_usage()
    return await _admin(request).usage_summary(
        account=account, utc_offset_minutes=utc_offset_minutes, by_account=True,
        **rows.filters())
