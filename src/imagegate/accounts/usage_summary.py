"""Which usage rows a listing or a summary covers (`UsageFilter`), and the summary itself:
totals, per local day, per model and per account, added up by the database (GROUP BY), never
by loading the rows.

Days are the client's: `utc_offset_minutes` shifts each row's time before its date is taken,
so a browser at UTC+8 sees its own midnight. SQLite and PostgreSQL spell that differently
(`_local_day`); each row's day is computed in a subquery and grouped on outside it, so the
grouping never has to match an expression holding bound parameters (which PostgreSQL cannot
tell are equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..errors import InvalidRequest
from .tables import Account, UsageRecord

STATUS_WORDS = ("succeeded", "failed")
"""`status` filter words: a request succeeded when its HTTP status was below 400."""
MAX_UTC_OFFSET_MINUTES = 840
"""UTC+14 (Kiribati) and, the other way, more than any zone's UTC-12."""


@dataclass(frozen=True)
class UsageFilter:
    """Rows matching every field that is not None; `until` is exclusive. `status`: one of
    STATUS_WORDS, or an HTTP status as digits ("402")."""

    account_id: int | None = None
    key_id: int | None = None
    model: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    status: str | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.account_id is not None:
            found.append(UsageRecord.account_id == self.account_id)
        if self.key_id is not None:
            found.append(UsageRecord.key_id == self.key_id)
        if self.model is not None:
            found.append(UsageRecord.model == self.model)
        if self.since is not None:
            found.append(UsageRecord.created_at >= self.since)
        if self.until is not None:
            found.append(UsageRecord.created_at < self.until)
        if self.status is not None:
            found.append(status_condition(self.status))
        return found


def status_condition(status: str) -> ColumnElement[bool]:
    if status == "succeeded":
        return UsageRecord.status < 400
    if status == "failed":
        return UsageRecord.status >= 400
    if status.isascii() and status.isdigit() and 100 <= int(status) <= 599:
        return UsageRecord.status == int(status)
    raise InvalidRequest("`status` must be `succeeded`, `failed` or an HTTP status such as 402.",
                         param="status")


async def summarize(engine: AsyncEngine, rows: UsageFilter, *, utc_offset_minutes: int = 0,
                    by_account: bool = False) -> dict[str, Any]:
    """`{"total", "by_day", "by_model"}` (and `"by_account"`) of the rows `rows` selects.
    `images` counts images delivered; `failed` requests that got a status of 400 or more."""
    if not -MAX_UTC_OFFSET_MINUTES <= utc_offset_minutes <= MAX_UTC_OFFSET_MINUTES:
        raise InvalidRequest(f"`utc_offset_minutes` must be between -{MAX_UTC_OFFSET_MINUTES} "
                             f"and {MAX_UTC_OFFSET_MINUTES}.", param="utc_offset_minutes")
    where = rows.conditions()
    async with engine.connect() as conn:
        summary: dict[str, Any] = {
            "total": await _total(conn, where),
            "by_day": await _by_day(conn, where, utc_offset_minutes),
            "by_model": await _by_model(conn, where),
        }
        if by_account:
            summary["by_account"] = await _by_account(conn, where)
    return summary


async def totals(engine: AsyncEngine, rows: UsageFilter) -> dict[str, int]:
    """`summarize`'s `total` alone: requests, images, cost_micros, failed."""
    async with engine.connect() as conn:
        return await _total(conn, rows.conditions())


async def _total(conn: AsyncConnection, where: list[ColumnElement[bool]]) -> dict[str, int]:
    failed = func.coalesce(func.sum(case((UsageRecord.status >= 400, 1), else_=0)), 0)
    row = (await conn.execute(
        select(func.count(), *_sums(UsageRecord.images_delivered, UsageRecord.cost_micros),
               failed).where(*where))).one()
    return {"requests": int(row[0]), "images": int(row[1]), "cost_micros": int(row[2]),
            "failed": int(row[3])}


def _sums(images: Any, cost: Any) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    return func.coalesce(func.sum(images), 0), func.coalesce(func.sum(cost), 0)


def _counts(row: Any) -> dict[str, int]:
    """The three numbers every group has, from a row ending in (requests, images, cost)."""
    return {"requests": int(row[-3]), "images": int(row[-2]), "cost_micros": int(row[-1])}


def _local_day(dialect: str, utc_offset_minutes: int) -> ColumnElement[str]:
    """Each row's date (`YYYY-MM-DD`) at `utc_offset_minutes` from UTC. SQLite keeps times as
    UTC text, which its date() shifts; PostgreSQL keeps `timestamptz`, taken to UTC first so
    the session's time zone plays no part."""
    if dialect == "postgresql":
        shifted = func.timezone("UTC", UsageRecord.created_at
                                + timedelta(minutes=utc_offset_minutes))
        return func.to_char(shifted, "YYYY-MM-DD")
    return func.date(UsageRecord.created_at, f"{utc_offset_minutes:+d} minutes")


async def _by_day(conn: AsyncConnection, where: list[ColumnElement[bool]],
                  utc_offset_minutes: int) -> list[dict[str, Any]]:
    day = _local_day(conn.dialect.name, utc_offset_minutes).label("day")
    rows = select(day, UsageRecord.images_delivered, UsageRecord.cost_micros) \
        .where(*where).subquery()
    query: Select[Any] = (select(rows.c.day, func.count(),
                                 *_sums(rows.c.images_delivered, rows.c.cost_micros))
                          .group_by(rows.c.day).order_by(rows.c.day))
    return [{"date": str(row[0]), **_counts(row)} for row in await conn.execute(query)]


async def _by_model(conn: AsyncConnection, where: list[ColumnElement[bool]]
                    ) -> list[dict[str, Any]]:
    query = (select(UsageRecord.model, func.count(),
                    *_sums(UsageRecord.images_delivered, UsageRecord.cost_micros))
             .where(*where).group_by(UsageRecord.model))
    found = [{"model": row[0], **_counts(row)} for row in await conn.execute(query)]
    # Sorted here: the databases order NULL differently, and there are few models.
    return sorted(found, key=lambda g: (-g["cost_micros"], g["model"] or ""))


async def _by_account(conn: AsyncConnection, where: list[ColumnElement[bool]]
                      ) -> list[dict[str, Any]]:
    query = (select(UsageRecord.account_id, Account.name, func.count(),
                    *_sums(UsageRecord.images_delivered, UsageRecord.cost_micros))
             .select_from(UsageRecord)
             .outerjoin(Account, Account.id == UsageRecord.account_id)
             .where(*where).group_by(UsageRecord.account_id, Account.name))
    found = [{"account_id": row[0], "account": row[1], **_counts(row)}
             for row in await conn.execute(query)]
    return sorted(found, key=lambda g: (-g["cost_micros"], g["account"] or ""))
