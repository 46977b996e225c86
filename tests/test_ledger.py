"""The Ledger on its own (no server), on SQLite and on PostgreSQL (`pg_url`; skipped without
IMAGEGATE_TEST_DATABASE_URL).

The invariant under test, for every account at every moment:
    balance = sum(ledger entries) - sum(amounts of held reservations)
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from imagegate.accounts.admin import Admin
from imagegate.accounts.ledger import InsufficientBalance, Ledger, Settlement, utcnow
from imagegate.accounts.tables import Account, LedgerEntry, Reservation, UsageRecord


@pytest.fixture
def ledger(engine: AsyncEngine) -> Ledger:
    return Ledger(engine, node_id="node-a", lease_seconds=900)


@pytest.fixture
def admin(engine: AsyncEngine, ledger: Ledger) -> Admin:
    return Admin(engine, ledger, "USD")


async def _account(admin: Admin, balance: int, **fields: Any) -> int:
    account = await admin.create_account(f"acct-{uuid.uuid4().hex[:10]}", **fields)
    if balance:
        await admin.ledger.topup(account["id"], balance, "test")
    return int(account["id"])


def _rid() -> str:
    return f"req_{uuid.uuid4().hex}"


async def _state(engine: AsyncEngine, account_id: int) -> dict[str, int]:
    """balance, sum(ledger entries), sum(held), and charges, read in one transaction."""
    async with engine.connect() as conn:
        balance = await conn.scalar(select(Account.balance_micros)
                                    .where(Account.id == account_id))
        entries = await conn.scalar(select(func.coalesce(func.sum(LedgerEntry.amount_micros), 0))
                                    .where(LedgerEntry.account_id == account_id))
        held = await conn.scalar(select(func.coalesce(func.sum(Reservation.amount_micros), 0))
                                 .where(Reservation.account_id == account_id,
                                        Reservation.status == "held"))
        charged = await conn.scalar(
            select(func.coalesce(func.sum(Reservation.charged_micros), 0))
            .where(Reservation.account_id == account_id))
    return {"balance": int(balance), "entries": int(entries), "held": int(held),
            "charged": int(charged)}


async def _assert_invariant(engine: AsyncEngine, account_id: int) -> dict[str, int]:
    state = await _state(engine, account_id)
    assert state["balance"] == state["entries"] - state["held"], state
    return state


async def _reservation(engine: AsyncEngine, request_id: str) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(select(Reservation)
                                   .where(Reservation.request_id == request_id))).first()


# --------------------------------------------------------------------------------------------


async def test_reserve_settle_release_topup(engine: AsyncEngine, ledger: Ledger,
                                            admin: Admin) -> None:
    account = await _account(admin, 100_000)

    first, second = _rid(), _rid()
    await ledger.reserve(account, first, 30_000)
    await ledger.reserve(account, second, 50_000)
    state = await _assert_invariant(engine, account)
    assert (state["balance"], state["held"]) == (20_000, 80_000)
    assert (await admin.account(account))["held_micros"] == 80_000

    # Partial charge: 10_000 of 30_000; the rest comes back.
    assert await ledger.settle(first, 10_000) == Settlement(charged=10_000, refunded=20_000)
    state = await _assert_invariant(engine, account)
    assert (state["balance"], state["held"], state["entries"]) == (40_000, 50_000, 90_000)
    row = await _reservation(engine, first)
    assert (row.status, row.charged_micros) == ("settled", 10_000)

    await ledger.release(second)
    state = await _assert_invariant(engine, account)
    assert (state["balance"], state["held"]) == (90_000, 0)
    row = await _reservation(engine, second)
    assert (row.status, row.charged_micros) == ("released", 0)

    assert await ledger.topup(account, 10_000, "more") == 100_000
    assert await ledger.topup(account, -40_000, "adjustment") == 60_000
    async with engine.connect() as conn:
        kinds = (await conn.execute(select(LedgerEntry.kind, LedgerEntry.amount_micros)
                                    .where(LedgerEntry.account_id == account)
                                    .order_by(LedgerEntry.id))).all()
    assert [tuple(k) for k in kinds] == [("topup", 100_000), ("charge", -10_000),
                                         ("topup", 10_000), ("adjust", -40_000)]
    await _assert_invariant(engine, account)
    with pytest.raises(LookupError):
        await ledger.topup(987_654, 1)


async def test_reserve_refuses_what_the_balance_cannot_cover(engine: AsyncEngine,
                                                             ledger: Ledger,
                                                             admin: Admin) -> None:
    account = await _account(admin, 10_000)
    with pytest.raises(InsufficientBalance) as raised:
        await ledger.reserve(account, _rid(), 10_001)
    assert (raised.value.status, raised.value.type, raised.value.code) == (
        402, "insufficient_quota", "insufficient_balance")
    state = await _assert_invariant(engine, account)
    assert (state["balance"], state["held"]) == (10_000, 0)
    async with engine.connect() as conn:  # the refused reservation left no row behind
        assert await conn.scalar(select(func.count()).select_from(Reservation)
                                 .where(Reservation.account_id == account)) == 0

    await ledger.reserve(account, _rid(), 10_000)  # exactly the balance is fine
    with pytest.raises(InsufficientBalance):
        await ledger.reserve(account, _rid(), 1)
    assert (await _assert_invariant(engine, account))["balance"] == 0

    unlimited = await _account(admin, 0, unlimited=True)
    request = _rid()
    await ledger.reserve(unlimited, request, 5_000_000)
    await ledger.settle(request, 5_000_000)
    state = await _assert_invariant(engine, unlimited)
    assert state["balance"] == -5_000_000 and state["held"] == 0


async def test_settle_and_release_take_effect_once(engine: AsyncEngine, ledger: Ledger,
                                                   admin: Admin) -> None:
    account = await _account(admin, 100_000)
    request = _rid()
    await ledger.reserve(account, request, 40_000)
    usage = {"request_id": request, "endpoint": "test", "status": 200, "account_id": account}

    assert await ledger.settle(request, 15_000, usage) == Settlement(15_000, 25_000)
    # A retry (or a sweep) after settlement: no effect on money, no second usage row.
    assert await ledger.settle(request, 40_000) is None
    await ledger.release(request)
    state = await _assert_invariant(engine, account)
    assert (state["balance"], state["held"], state["entries"]) == (85_000, 0, 85_000)
    async with engine.connect() as conn:
        costs = (await conn.execute(select(UsageRecord.cost_micros)
                                    .where(UsageRecord.request_id == request))).scalars().all()
        charges = await conn.scalar(select(func.count()).select_from(LedgerEntry)
                                    .where(LedgerEntry.request_id == request))
    assert costs == [15_000] and charges == 1

    released = _rid()
    await ledger.reserve(account, released, 20_000)
    await ledger.release(released)
    await ledger.release(released)
    assert await ledger.settle(released, 20_000) is None  # released stays released: no charge
    state = await _assert_invariant(engine, account)
    assert (state["balance"], state["held"], state["entries"]) == (85_000, 0, 85_000)

    # Settling an id that was never reserved moves nothing.
    assert await ledger.settle(_rid(), 1_000) is None
    assert (await _assert_invariant(engine, account))["balance"] == 85_000


async def test_concurrent_settle_and_release_of_one_reservation(engine: AsyncEngine,
                                                                ledger: Ledger,
                                                                admin: Admin) -> None:
    """A request finishing while a sweep releases it: exactly one of them takes effect."""
    account = await _account(admin, 1_000_000)
    requests = [_rid() for _ in range(20)]
    for request in requests:
        await ledger.reserve(account, request, 10_000)
    await asyncio.gather(*(op for r in requests
                           for op in (ledger.settle(r, 10_000), ledger.release(r),
                                      ledger.settle(r, 5_000))))
    state = await _assert_invariant(engine, account)
    assert state["held"] == 0
    async with engine.connect() as conn:
        rows = (await conn.execute(select(Reservation.status, Reservation.charged_micros)
                                   .where(Reservation.account_id == account))).all()
    assert all((s, c) in {("settled", 10_000), ("released", 0), ("settled", 5_000)}
               for s, c in rows), rows
    assert state["balance"] == 1_000_000 - sum(c for _, c in rows)


async def test_charge_is_capped_at_the_amount_held(engine: AsyncEngine, ledger: Ledger,
                                                   admin: Admin) -> None:
    account = await _account(admin, 50_000)
    request = _rid()
    await ledger.reserve(account, request, 20_000)
    assert await ledger.settle(request, 999_999) == Settlement(charged=20_000, refunded=0)
    state = await _assert_invariant(engine, account)
    assert (state["balance"], state["entries"]) == (30_000, 30_000)

    negative = _rid()
    await ledger.reserve(account, negative, 10_000)
    assert await ledger.settle(negative, -5_000) == Settlement(charged=0, refunded=10_000)
    assert (await _assert_invariant(engine, account))["balance"] == 30_000
    assert (await _reservation(engine, negative)).status == "released"


async def test_release_stale(engine: AsyncEngine, ledger: Ledger, admin: Admin) -> None:
    account = await _account(admin, 100_000)
    other = Ledger(engine, node_id="node-b", lease_seconds=900)

    mine, theirs, expired, done = _rid(), _rid(), _rid(), _rid()
    await ledger.reserve(account, mine, 10_000)     # node-a, lease running
    await other.reserve(account, theirs, 20_000)    # node-b, lease running
    await other.reserve(account, expired, 30_000)   # node-b, lease over (below)
    await ledger.reserve(account, done, 5_000)      # node-a, settled already
    await ledger.settle(done, 5_000)
    async with engine.begin() as conn:
        await conn.execute(update(Reservation).where(Reservation.request_id == expired)
                           .values(expires_at=utcnow() - timedelta(seconds=1)))

    # A node never sweeps its own reservations from under its live requests...
    assert await other.release_stale() == 0
    assert (await _reservation(engine, expired)).status == "held"
    # ...another node's sweep releases only what is past its lease.
    assert await ledger.release_stale() == 1
    assert (await _reservation(engine, expired)).status == "released"
    assert (await _reservation(engine, mine)).status == "held"
    assert (await _reservation(engine, theirs)).status == "held"
    state = await _assert_invariant(engine, account)
    assert state["held"] == 30_000

    # node-a restarting releases what node-a held, not node-b's live reservations.
    restarted = Ledger(engine, node_id="node-a", lease_seconds=900)
    assert await restarted.release_stale(this_node_restarted=True) == 1
    assert (await _reservation(engine, mine)).status == "released"
    assert (await _reservation(engine, theirs)).status == "held"
    assert (await _reservation(engine, done)).status == "settled"
    state = await _assert_invariant(engine, account)
    assert (state["balance"], state["held"]) == (75_000, 20_000)
    assert await restarted.release_stale(this_node_restarted=True) == 0

    # A lease of zero seconds is over at once.
    short = Ledger(engine, node_id="node-c", lease_seconds=0)
    fleeting = _rid()
    await short.reserve(account, fleeting, 1_000)
    await asyncio.sleep(0.01)
    assert await ledger.release_stale() == 1
    state = await _assert_invariant(engine, account)
    assert (state["balance"], state["held"]) == (75_000, 20_000)


async def test_random_concurrent_traffic_keeps_the_books_exact(engine: AsyncEngine,
                                                               ledger: Ledger,
                                                               admin: Admin) -> None:
    rng = random.Random(20240611)
    start = 600_000
    prepaid = await _account(admin, start)
    second = await _account(admin, 250_000)
    unlimited = await _account(admin, 0, unlimited=True)
    accounts = [prepaid, prepaid, prepaid, second, unlimited]
    low_water = {prepaid: start, second: 250_000}
    outcome: Counter[str] = Counter()
    stop = asyncio.Event()

    async def watch() -> None:
        """Reads the prepaid balances all along: they must never dip below zero."""
        while not stop.is_set():
            async with engine.connect() as conn:
                rows = (await conn.execute(select(Account.id, Account.balance_micros)
                                           .where(Account.id.in_(list(low_water))))).all()
            for account_id, balance in rows:
                low_water[account_id] = min(low_water[account_id], int(balance))
            await asyncio.sleep(0.01)

    async def one(i: int) -> None:
        account = rng.choice(accounts)
        amount = rng.choice([1, 999, 5_000, 10_000, 25_000, 40_000])
        plan = rng.random()
        charge = rng.randint(-10, amount + 10)  # out-of-range charges are clamped
        request = f"req_{i}_{uuid.uuid4().hex[:8]}"
        await asyncio.sleep(rng.random() * 0.05)
        try:
            await ledger.reserve(account, request, amount)
        except InsufficientBalance:
            outcome["refused"] += 1
            return
        await asyncio.sleep(rng.random() * 0.02)
        if plan < 0.45:
            await ledger.settle(request, charge, {"request_id": request, "endpoint": "test",
                                                  "status": 200, "account_id": account})
            outcome["settled"] += 1
        elif plan < 0.75:
            await ledger.release(request)
            outcome["released"] += 1
        elif plan < 0.9:  # the request and a sweep race to finish it
            await asyncio.gather(ledger.settle(request, charge), ledger.release(request))
            outcome["raced"] += 1
        else:  # left held, as by a request still running
            outcome["held"] += 1

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.gather(*(one(i) for i in range(300)))
    finally:
        stop.set()
        await watcher

    assert outcome["refused"] > 0 and outcome["settled"] > 0 and outcome["held"] > 0, outcome
    assert min(low_water.values()) >= 0, low_water
    for account in (prepaid, second, unlimited):
        state = await _assert_invariant(engine, account)
        if account != unlimited:
            assert state["balance"] >= 0, state
        # Charges in the ledger are exactly what reservations say was charged.
        async with engine.connect() as conn:
            charges = await conn.scalar(
                select(func.coalesce(func.sum(-LedgerEntry.amount_micros), 0))
                .where(LedgerEntry.account_id == account, LedgerEntry.kind == "charge"))
        assert int(charges) == state["charged"], (state, charges)
        info = await admin.account(account)
        assert (info["balance_micros"], info["held_micros"], info["spent_micros"]) == (
            state["balance"], state["held"], state["charged"])
        assert all(type(info[f]) is int
                   for f in ("balance_micros", "held_micros", "spent_micros")), info

    # Whatever was left held goes back on a restart; the books still balance.
    assert await ledger.release_stale(this_node_restarted=True) == outcome["held"]
    for account in (prepaid, second, unlimited):
        state = await _assert_invariant(engine, account)
        assert state["held"] == 0

