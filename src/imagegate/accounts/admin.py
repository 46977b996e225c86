"""Operator actions on accounts, keys and usage; shared by the admin API and the CLI."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..errors import APIError, InvalidRequest, NotFound
from .keys import hash_key, mint_key
from .ledger import Ledger, utcnow
from .tables import Account, ApiKey, LedgerEntry, Reservation, UsageRecord
from .usage_summary import UsageFilter, summarize, totals

log = logging.getLogger(__name__)

MAX_ID = 2**31 - 1
"""Account and key ids are 32-bit columns (PostgreSQL `integer`)."""
MAX_MULTIPLIER = 1000
MAX_MONEY_MICROS = 10**15
"""The largest single top-up: a billion currency units; far from 64-bit overflow."""
MAX_NAME_CHARS = 200
MAX_MULTIPLIER_CHARS = 32
MAX_NOTE_CHARS = 1000
MAX_ALLOW_LIST = 1000
"""Entries in a key's model or IP allow-list."""
MAX_RPM = 1_000_000_000
MAX_CONCURRENCY = 1_000_000
LOCAL_ACCOUNT = "local"
ADMIN_ACCOUNT = "admin"
KEY_FIELDS = ("name", "expires_at", "allowed_models", "allowed_ips", "rpm_limit", "visible_mark",
              "concurrency_limit", "price_multiplier")
"""What `update_key` may change; `None` clears a field (but `name`, which every key has)."""
DATABASE_CHECK_SECONDS = 5.0
"""How long `database_status` waits for the database to answer."""


class LastAdminKey(APIError):
    """409: the change would leave no enabled admin key, and nobody could administer again."""

    status = 409
    code = "last_admin_key"


@dataclass
class NewKey:
    key: str
    """Shown once; only its hash is kept."""
    info: dict[str, Any]


class Admin:
    def __init__(self, engine: AsyncEngine, ledger: Ledger, currency: str) -> None:
        self.engine = engine
        self.ledger = ledger
        self.currency = currency

    # accounts -----------------------------------------------------------------------------

    async def create_account(self, name: str, *, unlimited: bool = False,
                             price_multiplier: str = "1", label_producer: str | None = None,
                             visible_mark: bool | None = None) -> dict[str, Any]:
        if name.isdigit():  # lookups read digits as an id
            raise InvalidRequest("An account name must not be all digits.", param="name")
        _check_multiplier(price_multiplier)
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(Account).values(
                    name=name, currency=self.currency, balance_micros=0, unlimited=unlimited,
                    price_multiplier=price_multiplier, label_producer=label_producer or None,
                    visible_mark=visible_mark, created_at=utcnow()))
        except IntegrityError:
            raise InvalidRequest(f"An account named {name!r} exists already.", param="name",
                                 code="account_exists") from None
        return await self.account(name)

    async def ensure_account(self, name: str, *, unlimited: bool) -> int:
        async with self.engine.connect() as conn:
            found = await conn.scalar(select(Account.id).where(Account.name == name))
        if found is not None:
            return int(found)
        try:
            return int((await self.create_account(name, unlimited=unlimited))["id"])
        except InvalidRequest:  # created by a concurrent start-up
            return int((await self.account(name))["id"])

    async def account(self, ref: str | int) -> dict[str, Any]:
        """An account by id or name, with its balance and what is held right now."""
        text = str(ref)
        if len(text) > MAX_NAME_CHARS:  # longer than any name or id: no such account
            raise NotFound(f"No account {text[:40]!r}...", param="account")
        if text.isascii() and text.isdigit():
            if int(text) > MAX_ID:
                raise NotFound(f"No account {ref!r}.", param="account")
            condition = Account.id == int(text)
        else:
            condition = Account.name == text
        held_now = (select(func.coalesce(func.sum(Reservation.amount_micros), 0))
                    .where(Reservation.account_id == Account.id, Reservation.status == "held")
                    .scalar_subquery())
        async with self.engine.connect() as conn:
            # Balance and held in one statement, so the pair is one consistent snapshot.
            row = (await conn.execute(select(Account, held_now.label("held"))
                                      .where(condition))).first()
            if row is None:
                raise NotFound(f"No account {ref!r}.", param="account")
            spent = await conn.scalar(
                select(func.coalesce(func.sum(-LedgerEntry.amount_micros), 0))
                .where(LedgerEntry.account_id == row.id, LedgerEntry.kind == "charge"))
        held = int(row.held)
        return {"id": row.id, "name": row.name, "currency": row.currency,
                "balance_micros": row.balance_micros, "held_micros": held,
                "spent_micros": int(spent or 0), "unlimited": row.unlimited,
                "price_multiplier": row.price_multiplier, "label_producer": row.label_producer,
                "visible_mark": row.visible_mark, "created_at": as_utc(row.created_at)}

    async def accounts(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            ids = (await conn.execute(select(Account.id).order_by(Account.id))).scalars().all()
        return [await self.account(i) for i in ids]

    async def update_account(self, ref: str | int, *, price_multiplier: str | None = None,
                             unlimited: bool | None = None,
                             labels: dict[str, Any] | None = None) -> dict[str, Any]:
        """Change what a request of the account costs, whether it may run short, or its
        labels (`labels`: `label_producer` and `visible_mark`, None clears one back to the
        server's); the caller forgets the account's cached keys, so the next request sees the
        change."""
        changes: dict[str, Any] = {}
        if price_multiplier is not None:
            _check_multiplier(price_multiplier)
            changes["price_multiplier"] = price_multiplier
        if unlimited is not None:
            changes["unlimited"] = unlimited
        for field, value in (labels or {}).items():
            if field not in ("label_producer", "visible_mark"):
                raise InvalidRequest(f"An account has no label field {field!r}.", param=field)
            changes[field] = (value or None) if field == "label_producer" else value
        account = await self.account(ref)
        if changes:
            async with self.engine.begin() as conn:
                await conn.execute(update(Account).where(Account.id == account["id"])
                                   .values(**changes))
        return await self.account(account["id"])

    async def topup(self, ref: str | int, amount_micros: int, note: str | None = None
                    ) -> dict[str, Any]:
        if amount_micros == 0 or abs(amount_micros) > MAX_MONEY_MICROS:
            raise InvalidRequest(
                f"A top-up must be non-zero and at most {MAX_MONEY_MICROS} micro-units.",
                param="amount")
        account = await self.account(ref)
        await self.ledger.topup(account["id"], amount_micros, note)
        return await self.account(account["id"])

    # keys ---------------------------------------------------------------------------------

    async def create_key(self, account: str | int, name: str, *, is_admin: bool = False,
                         expires_at: datetime | None = None,
                         allowed_models: list[str] | None = None,
                         allowed_ips: list[str] | None = None, rpm_limit: int | None = None,
                         concurrency_limit: int | None = None,
                         price_multiplier: str | None = None, visible_mark: bool | None = None,
                         key: str | None = None) -> NewKey:
        owner = await self.account(account)
        _check_key_fields(allowed_ips=allowed_ips, price_multiplier=price_multiplier,
                          rpm_limit=rpm_limit, concurrency_limit=concurrency_limit)
        if key is None:
            key, prefix, digest = mint_key()
        else:  # a configured key: show at most half of it
            prefix, digest = key[: min(12, len(key) // 2)], hash_key(key)
        async with self.engine.begin() as conn:
            result = await conn.execute(insert(ApiKey).values(
                account_id=owner["id"], name=name, prefix=prefix, key_hash=digest,
                is_admin=is_admin, enabled=True, expires_at=to_utc(expires_at),
                allowed_models=allowed_models, allowed_ips=allowed_ips, rpm_limit=rpm_limit,
                concurrency_limit=concurrency_limit, price_multiplier=price_multiplier,
                visible_mark=visible_mark, created_at=utcnow()))
            assert result.inserted_primary_key is not None
            key_id = result.inserted_primary_key[0]
        return NewKey(key=key, info=await self.key(key_id))

    async def key(self, key_id: int) -> dict[str, Any]:
        if not 0 < key_id <= MAX_ID:
            raise NotFound(f"No API key {key_id}.", param="key")
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(ApiKey).where(ApiKey.id == key_id))).first()
        if row is None:
            raise NotFound(f"No API key {key_id}.", param="key")
        return _key_info(row)

    async def keys(self, account: str | int | None = None) -> list[dict[str, Any]]:
        query = select(ApiKey).order_by(ApiKey.id)
        if account is not None:
            query = query.where(ApiKey.account_id == (await self.account(account))["id"])
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_key_info(r) for r in rows]

    async def update_key(self, key_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        """Set the fields in `changes` (KEY_FIELDS; None clears one), checked as at creation.
        An expiry in the past is refused for the last usable admin key (409), as disabling it
        is. The caller forgets the cached key, so the change applies to its next request."""
        unknown = set(changes) - set(KEY_FIELDS)
        if unknown:
            raise InvalidRequest(f"A key has no changeable field {sorted(unknown)[0]!r}.",
                                 param=sorted(unknown)[0])
        if "name" in changes and not changes["name"]:
            raise InvalidRequest("A key's `name` cannot be removed.", param="name")
        _check_key_fields(**{field: changes.get(field) for field in
                             ("allowed_ips", "price_multiplier", "rpm_limit",
                              "concurrency_limit")})
        values = dict(changes)
        if "expires_at" in values:
            values["expires_at"] = to_utc(values["expires_at"])
        await self.key(key_id)  # 404 for a key that is not there
        if values:
            async with self.engine.begin() as conn:
                expires = values.get("expires_at")
                if expires is not None and expires <= datetime.now(timezone.utc):
                    await _keep_an_admin(conn, key_id, "expire")
                await conn.execute(update(ApiKey).where(ApiKey.id == key_id).values(**values))
        return await self.key(key_id)

    async def set_key_enabled(self, key_id: int, enabled: bool) -> dict[str, Any]:
        if not 0 < key_id <= MAX_ID:
            raise NotFound(f"No API key {key_id}.", param="key")
        async with self.engine.begin() as conn:
            if not enabled:
                await _keep_an_admin(conn, key_id, "disable")
            changed = await conn.execute(update(ApiKey).where(ApiKey.id == key_id)
                                         .values(enabled=enabled))
        if changed.rowcount != 1:
            raise NotFound(f"No API key {key_id}.", param="key")
        return await self.key(key_id)

    async def delete_key(self, key_id: int) -> None:
        if not 0 < key_id <= MAX_ID:
            raise NotFound(f"No API key {key_id}.", param="key")
        async with self.engine.begin() as conn:
            await _keep_an_admin(conn, key_id, "delete")
            deleted = await conn.execute(delete(ApiKey).where(ApiKey.id == key_id))
        if deleted.rowcount != 1:
            raise NotFound(f"No API key {key_id}.", param="key")

    async def has_admin_key(self) -> bool:
        async with self.engine.connect() as conn:
            return bool(await conn.scalar(
                select(func.count()).select_from(ApiKey).where(ApiKey.is_admin.is_(True))))

    async def ensure_admin_key(self, key: str) -> None:
        """Make sure `key` exists as an enabled admin key (configured secret)."""
        async with self.engine.connect() as conn:
            found = await conn.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(key)))
        if found is None:
            await self.ensure_account(ADMIN_ACCOUNT, unlimited=True)
            await self.create_key(ADMIN_ACCOUNT, "configured admin key", is_admin=True, key=key)

    # the database -------------------------------------------------------------------------

    async def database_status(self) -> dict[str, Any]:
        """Which database holds the accounts (`sqlite`, `postgresql`) and whether it answers
        now; never its URL, which may hold a password."""
        async def ask() -> None:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

        try:
            await asyncio.wait_for(ask(), DATABASE_CHECK_SECONDS)
            reachable = True
        except Exception as exc:  # whatever it was, the database did not answer
            log.warning("the database did not answer a check: %s: %s", type(exc).__name__, exc)
            reachable = False
        return {"backend": self.engine.dialect.name, "reachable": reachable}

    # usage --------------------------------------------------------------------------------

    async def usage(self, *, key_id: int | None = None, model: str | None = None,
                    account: str | int | None = None, since: datetime | None = None,
                    until: datetime | None = None, status: str | None = None,
                    limit: int = 10_000) -> list[dict[str, Any]]:
        """The newest `limit` rows that match, oldest first. `until` is exclusive; `status`
        is `succeeded`, `failed` or an HTTP status (usage_summary.py)."""
        rows = await self._usage_filter(key_id=key_id, model=model, account=account,
                                        since=since, until=until, status=status)
        query = (select(UsageRecord).where(*rows.conditions())
                 .order_by(UsageRecord.id.desc()).limit(limit))  # the newest
        async with self.engine.connect() as conn:
            found = list(reversed((await conn.execute(query)).all()))  # oldest first
        return [{c: as_utc(getattr(r, c)) if c == "created_at" else getattr(r, c)
                 for c in USAGE_COLUMNS} for r in found]

    async def usage_summary(self, *, key_id: int | None = None, model: str | None = None,
                            account: str | int | None = None, since: datetime | None = None,
                            until: datetime | None = None, status: str | None = None,
                            utc_offset_minutes: int = 0, by_account: bool = False
                            ) -> dict[str, Any]:
        """Totals of the matching rows, per day (at `utc_offset_minutes` from UTC), per model
        and with `by_account` per account; in the account's currency when one is named, else
        the server's."""
        rows = await self._usage_filter(key_id=key_id, model=model, account=account,
                                        since=since, until=until, status=status)
        currency = self.currency
        if rows.account_id is not None:
            currency = (await self.account(rows.account_id))["currency"]
        summary = await summarize(self.engine, rows, utc_offset_minutes=utc_offset_minutes,
                                  by_account=by_account)
        return {"object": "usage_summary", "currency": currency, **summary}

    async def usage_totals(self, *, account: str | int, since: datetime | None = None,
                           until: datetime | None = None) -> dict[str, int]:
        """One account's requests, images, cost_micros and failed requests in a period."""
        rows = await self._usage_filter(key_id=None, model=None, account=account, since=since,
                                        until=until, status=None)
        return await totals(self.engine, rows)

    async def _usage_filter(self, *, key_id: int | None, model: str | None,
                            account: str | int | None, since: datetime | None,
                            until: datetime | None, status: str | None) -> UsageFilter:
        if key_id is not None and not 0 < key_id <= MAX_ID:
            raise InvalidRequest(f"`key` must be between 1 and {MAX_ID}.", param="key")
        account_id = None if account is None else int((await self.account(account))["id"])
        return UsageFilter(account_id=account_id, key_id=key_id, model=model,
                           since=to_utc(since), until=to_utc(until), status=status)


USAGE_COLUMNS = ("created_at", "request_id", "key_id", "account_id", "endpoint", "model",
                 "deployment", "upstream_request_id", "n", "size", "quality",
                 "images_delivered", "cost_micros", "status", "error_code", "latency_ms")


async def _keep_an_admin(conn: AsyncConnection, key_id: int, action: str) -> None:
    """Refuse to disable or delete the last enabled, unexpired admin key. The admin keys' rows
    are locked (PostgreSQL; SQLite transactions here are IMMEDIATE, so writers queue anyway)
    so that two admins removing each other's keys at once cannot both succeed."""
    rows = (await conn.execute(
        select(ApiKey.id, ApiKey.expires_at)
        .where(ApiKey.is_admin.is_(True), ApiKey.enabled.is_(True))
        .with_for_update())).all()
    now = datetime.now(timezone.utc)
    usable = {row.id for row in rows
              if row.expires_at is None or as_utc(row.expires_at) > now}  # type: ignore[operator]
    if usable == {key_id}:
        raise LastAdminKey(
            f"Key {key_id} is the last enabled admin key; {action} it and nobody could use the "
            "admin API again. Create another admin key first.", param="key")


def _check_key_fields(*, allowed_ips: list[str] | None, price_multiplier: str | None,
                      rpm_limit: int | None, concurrency_limit: int | None) -> None:
    """A key's settings as creating or changing it checks them (None: not set)."""
    for net in allowed_ips or []:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise InvalidRequest(f"{net!r} is not an IP address or CIDR network.",
                                 param="allowed_ips") from None
    if price_multiplier is not None:
        _check_multiplier(price_multiplier)
    for field, limit, most in (("rpm_limit", rpm_limit, MAX_RPM),
                               ("concurrency_limit", concurrency_limit, MAX_CONCURRENCY)):
        if limit is not None and not 1 <= limit <= most:
            raise InvalidRequest(f"`{field}` must be between 1 and {most}.", param=field)


def _key_info(row: Any) -> dict[str, Any]:
    return {"id": row.id, "account_id": row.account_id, "name": row.name, "prefix": row.prefix,
            "is_admin": row.is_admin, "enabled": row.enabled,
            "expires_at": as_utc(row.expires_at),
            "allowed_models": row.allowed_models, "allowed_ips": row.allowed_ips,
            "rpm_limit": row.rpm_limit, "concurrency_limit": row.concurrency_limit,
            "price_multiplier": row.price_multiplier, "visible_mark": row.visible_mark,
            "created_at": as_utc(row.created_at)}


def to_utc(value: datetime | None) -> datetime | None:
    """For writes and filters: an aware time converted to UTC; a naive one taken as UTC
    (SQLite would otherwise keep the wall time and drop the offset)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC, so say so."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _check_multiplier(text: str) -> None:
    try:
        value = Decimal(text)
        ok = value.is_finite() and 0 <= value <= MAX_MULTIPLIER
    except InvalidOperation:
        ok = False
    if not ok:
        raise InvalidRequest(f"{text!r} is not a valid price multiplier.",
                             param="price_multiplier")
