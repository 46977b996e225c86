"""kill -9 during 20 paid generations, then a restart on the same data (SQLite and PostgreSQL).

The server (keys on) serves the fake provider's `gate:NAME` prompt: a generation that runs
until the file DATA_DIR/NAME exists, so the test knows every request is running (all 20
reservations held, read from the database) before it kills the process. After the restart:
nothing is held, every account's balance is its top-ups minus its charges to the micro-unit
(the sum of its ledger entries), and a retry with one of the same Idempotency-Keys runs again
at once (its claim died with the process) and is charged once.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from gateway import Gateway, wait_for
from sqlalchemy import func, select

from imagegate.accounts.database import create_engine
from imagegate.accounts.tables import Account, IdempotencyRecord, LedgerEntry, Reservation

UNIT = 10_000  # micros per fake-image
ACCOUNTS = 4
PER_ACCOUNT = 5  # 20 generations in all
TOPUP = 10 * UNIT
GATE = "crash-gate"

CONFIG = """
[providers]
fake = "fake_providers:FakeProvider"

[models.fake-image]
backend = "fake"
[models.fake-image.pricing]
per_image = "0.01"
"""


def _database_url(data_dir: Path, database: dict[str, str]) -> str:
    url = database.get("database_url") or f"sqlite:///{data_dir / 'imagegate.db'}"
    return url.replace("sqlite://", "sqlite+aiosqlite://", 1).replace(
        "postgresql://", "postgresql+asyncpg://", 1)


def _read(url: str) -> dict[str, Any]:
    """What the database says: held reservations, running claims, and per account its balance
    and the sum of its ledger entries (top-ups minus charges)."""

    async def read() -> dict[str, Any]:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                held = await conn.scalar(select(func.count()).select_from(Reservation)
                                         .where(Reservation.status == "held"))
                running = await conn.scalar(select(func.count()).select_from(IdempotencyRecord)
                                            .where(IdempotencyRecord.state == "running"))
                balances = dict((await conn.execute(
                    select(Account.name, Account.balance_micros))).all())
                entries = dict((await conn.execute(
                    select(Account.name, func.coalesce(func.sum(LedgerEntry.amount_micros), 0))
                    .join(LedgerEntry, LedgerEntry.account_id == Account.id, isouter=True)
                    .group_by(Account.name))).all())
                charges = await conn.scalar(select(func.count()).select_from(LedgerEntry)
                                            .where(LedgerEntry.kind == "charge"))
        finally:
            await engine.dispose()
        return {"held": held, "running": running, "balances": balances, "entries": entries,
                "charges": charges}

    return asyncio.run(read())


def test_kill_9_during_20_generations_then_restart(start_server: Callable,
                                                   database: dict[str, str]) -> None:
    settings = {"node_id": "crash-node", **database}
    first = Gateway.start(start_server, CONFIG, **settings)
    url = _database_url(first.data_dir, database)
    keys = {f"crash-{i}": first.funded_key(f"crash-{i}", TOPUP) for i in range(ACCOUNTS)}
    first.close()

    requests = [(name, f"idem-{name}-{j}", f"gate:{GATE} {uuid.uuid4().hex}")
                for name in keys for j in range(PER_ACCOUNT)]

    def send(gateway: Gateway, name: str, idem: str, prompt: str,
             timeout: float) -> httpx.Response:
        return gateway.generate(keys[name], prompt, headers={"Idempotency-Key": idem},
                                timeout=timeout)

    def doomed(name: str, idem: str, prompt: str) -> None:
        try:
            send(first, name, idem, prompt, 300)
        except httpx.HTTPError:
            pass  # the server dies under it

    threads = [threading.Thread(target=doomed, args=r, daemon=True) for r in requests]
    for thread in threads:
        thread.start()
    wait_for(lambda: _read(url)["held"] == len(requests), "20 generations to be running", 120,
             interval=0.1)  # each look opens the database afresh
    assert _read(url)["running"] == len(requests)

    first.server.process.send_signal(signal.SIGKILL)
    first.server.process.wait(30)
    for thread in threads:
        thread.join(60)
    (first.data_dir / GATE).touch()  # from now on a generation of these prompts finishes

    restarted = Gateway.start(start_server, CONFIG, data_dir=first.data_dir, **settings)
    after = _read(url)
    assert after["held"] == 0
    assert after["running"] == 0
    assert after["charges"] == 0
    for name in keys:
        assert after["balances"][name] == after["entries"][name] == TOPUP

    # A retry with the same key and body runs again at once: no wait for the 900 s lease.
    name, idem, prompt = requests[0]
    retried = send(restarted, name, idem, prompt, 60)
    assert retried.status_code == 200, retried.text
    assert len(retried.json()["data"]) == 1
    final = _read(url)
    assert final["held"] == 0
    for other in keys:
        expected = TOPUP - (UNIT if other == name else 0)
        assert final["balances"][other] == final["entries"][other] == expected
