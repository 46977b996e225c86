"""Usage rows made safe to store, and rows the database refused anyway kept for the operator.

Every usage row passes `safe_usage` once, before any write (the batched writer's and the one
inside `Ledger.settle`): strings become valid UTF-8 without NUL and are cut to their column's
length, integers are clamped to their column's range, unknown keys are dropped. The wire layer
validates requests first; this is the second line, so that no value can make a usage write (and
with it a charge) fail.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import BigInteger, Integer, String, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .tables import UsageRecord, UsageReject

log = logging.getLogger(__name__)

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
ERROR_CHARS = 2000
REJECT_ROW_CHARS = 20_000


def safe_text(value: Any, length: int | None = None) -> str:
    """`value` as text any database stores: lone surrogates and NUL become U+FFFD (a valid
    surrogate pair becomes its character), cut to `length` characters."""
    text = value if isinstance(value, str) else str(value)
    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    text = text.replace("\x00", "\ufffd")
    return text[:length] if length is not None else text


def clamp(value: Any, bounds: tuple[int, int], default: int = 0) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return max(bounds[0], min(bounds[1], number))


def _column_rules() -> dict[str, Any]:
    rules: dict[str, Any] = {}
    for column in UsageRecord.__table__.columns:
        if column.name == "id":
            continue
        kind = column.type
        if isinstance(kind, String):
            rules[column.name] = ("text", kind.length, column.nullable)
        elif isinstance(kind, BigInteger):
            rules[column.name] = ("int", INT64, column.nullable)
        elif isinstance(kind, Integer):
            rules[column.name] = ("int", INT32, column.nullable)
        else:
            rules[column.name] = ("as is", None, column.nullable)
    return rules


_RULES = _column_rules()


def safe_usage(row: dict[str, Any]) -> dict[str, Any]:
    """A copy of `row` that fits the `usage` table's columns (see the module's docstring)."""
    safe: dict[str, Any] = {}
    for name, value in row.items():
        rule = _RULES.get(name)
        if rule is None:
            continue
        kind, bounds, nullable = rule
        if value is None:
            safe[name] = None if nullable else ("" if kind == "text" else
                                                0 if kind == "int" else None)
        elif kind == "text":
            safe[name] = safe_text(value, bounds)
        elif kind == "int":
            safe[name] = clamp(value, bounds)
        else:
            safe[name] = value
    return safe


def describe_error(exc: BaseException) -> str:
    """One line naming the error, short enough for a log line and a Text column."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    return safe_text(f"{type(exc).__name__}: {message}", ERROR_CHARS)


async def record_reject(conn: AsyncConnection, row: dict[str, Any], exc: BaseException) -> None:
    """Keep a refused usage row in `usage_rejects` (as ASCII JSON: storable whatever it holds)
    and log it once, at ERROR."""
    error = describe_error(exc)
    request_id = row.get("request_id")
    log.error("usage row of request %s could not be stored and was set aside in usage_rejects: "
              "%s", ascii(request_id), error)
    dumped = json.dumps(row, default=str, ensure_ascii=True, sort_keys=True)
    await conn.execute(insert(UsageReject).values(
        created_at=datetime.now(timezone.utc),
        request_id=safe_text(request_id, 80) if request_id is not None else None,
        row=dumped[:REJECT_ROW_CHARS], error=error))


async def list_rejects(engine: AsyncEngine, limit: int = 100) -> list[dict[str, Any]]:
    """The newest rows set aside, newest first: id, created_at, request_id, row (the ASCII
    JSON text as stored: it keeps what could not be stored, such as a lone surrogate), error."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(UsageReject).order_by(UsageReject.id.desc())
                                   .limit(limit))).all()
    return [{"id": r.id, "created_at": _utc(r.created_at), "request_id": r.request_id,
             "row": r.row, "error": r.error} for r in rows]


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
