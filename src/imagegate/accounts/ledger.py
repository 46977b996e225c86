"""The only code that moves money.

    reserve   balance -= amount, a `held` reservation row  (one conditional UPDATE: 402 if short)
    settle    reservation held -> settled; balance += amount - charge; a `charge` ledger entry
    release   settle with a charge of zero

Each is one transaction. The balance check and the debit are one statement
(`UPDATE ... SET balance = balance - :amount WHERE balance >= :amount`), so no interleaving of
requests can spend the same micro twice. Settle and release flip the reservation out of `held`
with a conditional UPDATE first, so running either twice (a retry, a sweep racing a request) has
no second effect.

Invariant, for every account at every moment:
    balance = sum(ledger entries) - sum(amounts of held reservations)

A reservation names the server process that holds it (`incarnation`, see incarnation.py); only
reservations of processes that are provably gone are released by `release_stale`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from ..errors import APIError
from ..pricing import format_money
from .tables import Account, LedgerEntry, Reservation, UsageRecord
from .usage_rows import record_reject, safe_usage

log = logging.getLogger(__name__)


class InsufficientBalance(APIError):
    status = 402
    type = "insufficient_quota"
    code = "insufficient_balance"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Settlement:
    charged: int
    refunded: int


class Ledger:
    def __init__(self, engine: AsyncEngine, *, node_id: str, lease_seconds: int,
                 currency: str = "USD", incarnation: str | None = None) -> None:
        self.engine = engine
        self.currency = currency
        self.node_id = node_id
        self.incarnation = incarnation
        """This server process (incarnation.py); None for tools that reserve nothing."""
        self.lease = timedelta(seconds=lease_seconds)

    async def reserve(self, account_id: int, request_id: str, amount: int) -> None:
        """Hold `amount` for `request_id`, or raise 402 when the balance can't cover it."""
        now = utcnow()
        async with self.engine.begin() as conn:
            debited = await conn.execute(
                update(Account)
                .where(Account.id == account_id,
                       or_(Account.unlimited.is_(True), Account.balance_micros >= amount))
                .values(balance_micros=Account.balance_micros - amount)
            )
            if debited.rowcount != 1:
                raise InsufficientBalance(
                    "Your balance is too low for this request: it costs "
                    f"{format_money(amount, self.currency)}. Top up the account and retry.")
            await conn.execute(insert(Reservation).values(
                request_id=request_id, account_id=account_id, amount_micros=amount,
                status="held", charged_micros=0, node_id=self.node_id,
                incarnation=self.incarnation, created_at=now, expires_at=now + self.lease))

    async def settle(self, request_id: str, charge: int,
                     usage: dict[str, Any] | None = None) -> Settlement | None:
        """Charge `charge` (at most the amount held) and give back the rest; record usage in the
        same transaction. Returns None when the reservation was already settled or released."""
        async with self.engine.begin() as conn:
            held = (await conn.execute(
                select(Reservation.account_id, Reservation.amount_micros)
                .where(Reservation.request_id == request_id, Reservation.status == "held")
            )).first()
            if held is None:
                if usage is not None:
                    await _record_usage(conn, usage)
                return None
            account_id, amount = held
            charge = max(0, min(charge, amount))
            flipped = await conn.execute(
                update(Reservation)
                .where(Reservation.request_id == request_id, Reservation.status == "held")
                .values(status="settled" if charge else "released", charged_micros=charge)
            )
            if flipped.rowcount != 1:  # lost a race with a sweep; it did the refund
                if usage is not None:
                    await _record_usage(conn, usage)
                return None
            refund = amount - charge
            if refund:
                await conn.execute(update(Account).where(Account.id == account_id)
                                   .values(balance_micros=Account.balance_micros + refund))
            if charge:
                await conn.execute(insert(LedgerEntry).values(
                    account_id=account_id, kind="charge", amount_micros=-charge,
                    request_id=request_id, created_at=utcnow()))
            if usage is not None:
                await _record_usage(conn, {**usage, "cost_micros": charge})
            return Settlement(charged=charge, refunded=refund)

    async def release(self, request_id: str, usage: dict[str, Any] | None = None) -> None:
        await self.settle(request_id, 0, usage)

    async def topup(self, account_id: int, amount: int, note: str | None = None) -> int:
        """Credit (or, negative, debit) an account outside any request. Returns the new balance."""
        async with self.engine.begin() as conn:
            changed = await conn.execute(update(Account).where(Account.id == account_id)
                                         .values(balance_micros=Account.balance_micros + amount))
            if changed.rowcount != 1:
                raise LookupError(f"no account {account_id}")
            await conn.execute(insert(LedgerEntry).values(
                account_id=account_id, kind="topup" if amount >= 0 else "adjust",
                amount_micros=amount, note=note, created_at=utcnow()))
            balance = await conn.scalar(select(Account.balance_micros)
                                        .where(Account.id == account_id))
        assert balance is not None  # (the UPDATE above found the row)
        return int(balance)

    async def release_stale(self, dead: list[str] | tuple[str, ...] = (), *,
                            this_node_restarted: bool = False) -> int:
        """Release the reservations nobody will settle: those of the server processes in `dead`
        (incarnation.py says which: they ended, or their lock is free). Reservations from before
        incarnations (migration 0003) keep the old rule: at start-up this node's, in the sweep
        other nodes' past their lease. A live process's reservations are never released."""
        if this_node_restarted:
            legacy = Reservation.node_id == self.node_id
        else:
            legacy = (Reservation.expires_at < utcnow()) & (Reservation.node_id != self.node_id)
        condition: ColumnElement[bool] = Reservation.incarnation.is_(None) & legacy
        if dead:
            condition = condition | Reservation.incarnation.in_(list(dead))
        async with self.engine.connect() as conn:
            stale = (await conn.execute(
                select(Reservation.request_id)
                .where(Reservation.status == "held", condition))).scalars().all()
        for request_id in stale:
            await self.release(request_id)
        if stale:
            log.warning("released %d reservations of server processes that are gone",
                        len(stale))
        return len(stale)


async def _record_usage(conn: AsyncConnection, usage: dict[str, Any]) -> None:
    """Write the usage row in a savepoint of the settle's transaction: a row the database
    refuses rolls back only itself (it goes to usage_rejects), never the charge."""
    row = safe_usage({"created_at": utcnow(), **usage})
    try:
        async with conn.begin_nested():
            await conn.execute(insert(UsageRecord).values(**row))
    except Exception as exc:
        try:
            async with conn.begin_nested():
                await record_reject(conn, row, exc)
        except Exception:
            log.exception("could not set aside the usage row of request %s",
                          ascii(row.get("request_id")))
