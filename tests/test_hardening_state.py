"""State that must survive bad rows, second processes and crashes.

- Usage rows the database cannot store never block the rows after them; they are set aside in
  `usage_rejects` (shown by GET /admin/usage/rejects) and a charge is never rolled back by one.
- A second `imagegate serve` (same port, or same node_id on another port) cannot release a live
  server's reservations: it says why it won't start, and the live request is charged in full.
- Only processes that are provably gone lose their reservations and Idempotency-Key claims.
- Key ids are never reused on SQLite, also in a database made before the fix.
- An Idempotency-Key is scoped to its endpoint and caller.
- The SQLite database file is 0600.

Database tests run on SQLite and on PostgreSQL (`pg_url`; skipped without
IMAGEGATE_TEST_DATABASE_URL).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import _inherited_env, free_port
from fake_providers import calls
from gateway import ADMIN_KEY, Gateway, wait_for
from PIL import Image
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from imagegate.accounts import ledger as ledger_module
from imagegate.accounts import usage as usage_module
from imagegate.accounts.database import MIGRATIONS, create_engine
from imagegate.accounts.idempotency import Idempotency, Scope, release_claims
from imagegate.accounts.incarnation import FileLocks, Incarnations, NodeIdInUse
from imagegate.accounts.ledger import Ledger
from imagegate.accounts.tables import (
    Account,
    IdempotencyRecord,
    LedgerEntry,
    Reservation,
    UsageRecord,
    UsageReject,
)
from imagegate.accounts.usage import ROW_DEFAULTS, UsageWriter
from imagegate.storage import ANSWER_TYPES, LocalStore

UNIT = 10_000  # micros per fake-image

CONFIG = """
[providers]
fake = "fake_providers:FakeProvider"

[models.fake-image]
backend = "fake"
[models.fake-image.capabilities]
max_n = 4
max_reference_images = 1
[models.fake-image.pricing]
per_image = "0.01"
"""

# Values no column can hold as they are, on one database or the other.
BAD_VALUES: dict[str, dict[str, Any]] = {
    "n 2^31": {"n": 2**31},
    "n 2^63": {"n": 2**63},
    "cost 2^63": {"cost_micros": 2**63},
    "lone surrogate": {"model": "fake-\ud800-image"},
    "NUL": {"model": "fake\x00image"},
    "long model": {"model": "m" * 1000},
}


# --------------------------------------------------------------------------------------------
# helpers (the databases, `database_url` and `engine`, are conftest.py's)


def _row(request_id: str | None = None, **values: Any) -> dict[str, Any]:
    return {"request_id": request_id or f"req_{uuid.uuid4().hex}", "endpoint":
            "images.generations", "status": 200, "model": "fake-image", "n": 1, **values}


async def _usage_ids(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.execute(select(UsageRecord.request_id))).scalars())


async def _rejects(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return (await conn.execute(select(UsageReject).order_by(UsageReject.id))).all()


async def _new_account(engine: AsyncEngine, ledger: Ledger, balance: int) -> int:
    async with engine.begin() as conn:
        account_id = (await conn.execute(insert(Account).values(
            name=f"acct-{uuid.uuid4().hex[:10]}", currency="USD", balance_micros=0,
            unlimited=False, price_multiplier="1", created_at=datetime.now(timezone.utc))
            .returning(Account.id))).scalar_one()
    await ledger.topup(account_id, balance, "test")
    return int(account_id)


# --------------------------------------------------------------------------------------------
# 1. bad usage rows


async def test_bad_values_are_made_safe_before_the_write(engine: AsyncEngine) -> None:
    """Every bad value is stored (cleaned, cut, clamped) through the writer: nothing set aside."""
    writer = UsageWriter(engine)
    ids = {name: f"req_{uuid.uuid4().hex}" for name in BAD_VALUES}
    for name, values in BAD_VALUES.items():
        writer.add(_row(ids[name], **values))
    await writer.flush()
    assert await _rejects(engine) == []
    async with engine.connect() as conn:
        stored = {r.request_id: r for r in (await conn.execute(select(UsageRecord))).all()}
    assert set(stored) == set(ids.values())
    assert stored[ids["n 2^31"]].n == 2**31 - 1
    assert stored[ids["n 2^63"]].n == 2**31 - 1
    assert stored[ids["cost 2^63"]].cost_micros == 2**63 - 1
    assert stored[ids["lone surrogate"]].model == "fake-\ufffd-image"
    assert stored[ids["NUL"]].model == "fake\ufffdimage"
    assert stored[ids["long model"]].model == "m" * 200


async def test_rows_the_database_refuses_are_set_aside_and_the_rest_written(
        engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Even a row that reaches the database unsafe (the cleaning bypassed) blocks nothing:
    the good rows before and after it are written, the bad one is kept in usage_rejects, and
    it is logged once, however often the writer flushes."""
    monkeypatch.setattr(usage_module, "safe_usage", lambda row: row)
    writer = UsageWriter(engine)
    duplicate = f"req_{uuid.uuid4().hex}"
    bad = [_row(n=2**63), _row(model="a\ud800b"), _row(duplicate), _row(duplicate)]
    if engine.dialect.name == "postgresql":
        bad += [_row(n=2**31), _row(model="a\x00b"), _row(model="m" * 300)]
    good_before, good_after = _row(), _row()
    for row in [good_before, *bad, good_after]:
        writer.add(row)
    with caplog.at_level(logging.ERROR, logger="imagegate.accounts"):
        await writer.flush()
        await writer.flush()  # nothing is left queued, so nothing is retried or logged again
    written = await _usage_ids(engine)
    assert {good_before["request_id"], good_after["request_id"], duplicate} <= written
    rejects = await _rejects(engine)
    refused = len(bad) - 1  # one of the two duplicates was written
    assert len(rejects) == refused == writer.rejected
    assert all(r.error and r.row.isascii() for r in rejects)
    lines = [r for r in caplog.records if "usage_rejects" in r.getMessage()]
    assert len(lines) == refused

    # And the writer keeps going afterwards.
    later = _row()
    writer.add(later)
    await writer.flush()
    assert later["request_id"] in await _usage_ids(engine)


@pytest.mark.parametrize("unsafe", [False, True], ids=["cleaned", "cleaning-bypassed"])
async def test_a_settle_with_a_bad_usage_row_still_charges(
        engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, unsafe: bool) -> None:
    """The usage row written inside settle can never roll back the charge."""
    if unsafe:
        monkeypatch.setattr(ledger_module, "safe_usage", lambda row: row)
    ledger = Ledger(engine, node_id="node-a", lease_seconds=900)
    account = await _new_account(engine, ledger, 10 * UNIT)
    outcomes = []
    for values in BAD_VALUES.values():
        request_id = f"req_{uuid.uuid4().hex}"
        await ledger.reserve(account, request_id, 2 * UNIT)
        usage = {**ROW_DEFAULTS, **_row(request_id, **values), "account_id": account}
        outcomes.append(await ledger.settle(request_id, UNIT, usage))
    assert all(o is not None and o.charged == UNIT for o in outcomes)
    async with engine.connect() as conn:
        balance = await conn.scalar(select(Account.balance_micros).where(Account.id == account))
        charges = await conn.scalar(select(func.count()).select_from(LedgerEntry)
                                    .where(LedgerEntry.kind == "charge",
                                           LedgerEntry.account_id == account))
    assert (balance, charges) == (10 * UNIT - len(BAD_VALUES) * UNIT, len(BAD_VALUES))
    stored, rejected = len(await _usage_ids(engine)), len(await _rejects(engine))
    assert stored + rejected == len(BAD_VALUES)
    if not unsafe:
        assert rejected == 0


async def test_admin_usage_keeps_answering_and_shows_rejected_rows(
        inprocess: Callable, monkeypatch: pytest.MonkeyPatch,
        database: dict[str, str]) -> None:
    srv = await inprocess(CONFIG, **database)
    monkeypatch.setattr(usage_module, "safe_usage", lambda row: row)  # reach the database raw
    writer = srv.app.state.service.accounts.usage
    good, bad = _row(), _row(n=2**63, model="bad\ud800")
    for row in (bad, good):
        writer.add(row)

    response = await srv.client.get("/admin/usage", headers=srv.auth())
    assert response.status_code == 200, response.text
    assert good["request_id"] in {r["request_id"] for r in response.json()["data"]}
    again = await srv.client.get("/admin/usage", headers=srv.auth())
    assert again.status_code == 200, again.text

    shown = await srv.client.get("/admin/usage/rejects", headers=srv.auth())
    assert shown.status_code == 200, shown.text
    [reject] = shown.json()["data"]
    assert reject["request_id"] == bad["request_id"]
    row = json.loads(reject["row"])
    assert row["n"] == 2**63 and row["model"] == "bad\ud800"
    assert reject["error"]


# --------------------------------------------------------------------------------------------
# 2. a second server cannot take a live server's money


def _generate_in_background(gateway: Gateway, key: str, prompt: str,
                            results: list[httpx.Response | httpx.HTTPError]) -> threading.Thread:
    """Generate in a thread; its answer (or the client's error) is appended to `results`."""
    def run() -> None:
        try:
            results.append(gateway.generate(key, prompt))
        except httpx.HTTPError as exc:
            results.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _serve_and_wait(data_dir: Path, port: int, **settings: str) -> subprocess.CompletedProcess:
    """Run one more `imagegate serve` to its end (it is expected to refuse to start)."""
    env = {**_inherited_env(), "IMAGEGATE_DATA_DIR": str(data_dir), "IMAGEGATE_AUTH": "on",
           "IMAGEGATE_ADMIN_KEY": ADMIN_KEY, "IMAGEGATE_LOG_LEVEL": "warning",
           "PYTHONPATH": str(Path(__file__).parent)}
    env.update({f"IMAGEGATE_{k.upper()}": v for k, v in settings.items()})
    config = data_dir / "second.toml"
    config.write_text(CONFIG)
    return subprocess.run(
        [sys.executable, "-m", "imagegate", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--config", str(config)], env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("clash", ["same-port", "same-node-id"])
def test_a_second_server_cannot_release_a_live_servers_reservations(
        start_server: Callable, database: dict[str, str], clash: str) -> None:
    node = {"node_id": "shared-node"} if clash == "same-node-id" else {}
    first = Gateway.start(start_server, CONFIG, **database, **node)
    key = first.funded_key("payer", 5 * UNIT)
    results: list[httpx.Response | httpx.HTTPError] = []
    thread = _generate_in_background(first, key, f"gate:open {uuid.uuid4().hex}", results)
    wait_for(lambda: first.account("payer")["held_micros"] == UNIT, "the reservation")

    port = int(first.base_url.rsplit(":", 1)[1]) if clash == "same-port" else free_port()
    second = _serve_and_wait(first.data_dir, port, **database, **node)
    assert second.returncode != 0
    said = " ".join(second.stderr.split())
    if clash == "same-port":
        assert f"cannot listen on 127.0.0.1:{port}" in said, said
    else:
        assert "node id 'shared-node' is in use by a running server" in said, said
    assert first.account("payer")["held_micros"] == UNIT  # still held by the live server

    (first.data_dir / "open").touch()
    thread.join(60)
    [response] = results
    assert response.status_code == 200, response
    payer = first.account("payer")
    assert (payer["balance_micros"], payer["held_micros"], payer["spent_micros"]) == (
        4 * UNIT, 0, UNIT)
    assert [row["cost_micros"] for row in first.usage("payer")] == [UNIT]


async def _die(process: Incarnations) -> None:
    """What happens to a process's lock when it is killed: the kernel closes its file (the
    lock file stays), or PostgreSQL ends its session."""
    if isinstance(process.locks, FileLocks):
        assert process.locks._fd is not None
        os.close(process.locks._fd)
        process.locks._fd = None
    else:
        await process.locks.let_go()


async def test_only_processes_that_are_gone_lose_their_holds(engine: AsyncEngine,
                                                             tmp_path: Path) -> None:
    """Reservations and Idempotency-Key claims of a process whose lock is free are released;
    those of a live process (whatever its node id) are not, however old."""
    answers = LocalStore(tmp_path / "answers", 3600, ANSWER_TYPES)
    ledger = Ledger(engine, node_id="n", lease_seconds=900)
    account = await _new_account(engine, ledger, 10 * UNIT)

    async def process(node_id: str) -> tuple[Incarnations, Ledger, Idempotency]:
        me = Incarnations(engine, node_id=node_id, lease_seconds=900)
        await me.begin()
        return (me, Ledger(engine, node_id=node_id, lease_seconds=900, incarnation=me.id),
                Idempotency(engine, answers, holder=me.id))

    crashed, crashed_ledger, crashed_claims = await process("node-1")
    alive, alive_ledger, alive_claims = await process("node-2")
    for which, (ledger_, claims) in {"crashed": (crashed_ledger, crashed_claims),
                                     "alive": (alive_ledger, alive_claims)}.items():
        await ledger_.reserve(account, f"req-{which}", UNIT)
        assert await claims._claim(Scope(account, 1, "/images/generations"), which, "hash")

    await _die(crashed)
    # Another process comes up under node-1's name: it may, since node-1 is gone.
    restarted = Incarnations(engine, node_id="node-1", lease_seconds=900)
    await restarted.begin()
    dead = await restarted.dead()
    assert crashed.id in dead and alive.id not in dead
    assert await Ledger(engine, node_id="node-1", lease_seconds=900).release_stale(dead) == 1
    assert await release_claims(engine, dead) == 1
    async with engine.connect() as conn:
        held = set((await conn.execute(select(Reservation.request_id)
                                       .where(Reservation.status == "held"))).scalars())
        claims = set((await conn.execute(select(IdempotencyRecord.key))).scalars())
    assert (held, claims) == ({"req-alive"}, {"alive"})

    # A live process's name cannot be taken.
    with pytest.raises(NodeIdInUse, match="node-2"):
        await Incarnations(engine, node_id="node-2", lease_seconds=900).begin()
    for one in (alive, restarted):
        await one.end()


# --------------------------------------------------------------------------------------------
# 3. key ids are never reused


async def _create_key(srv: Any, account: str) -> int:
    response = await srv.client.post("/admin/keys", headers=srv.auth(),
                                     json={"account": account, "name": "k"})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def test_key_ids_are_never_reused(inprocess: Callable) -> None:
    srv = await inprocess(CONFIG)
    assert (await srv.client.post("/admin/accounts", headers=srv.auth(),
                                  json={"name": "ids"})).status_code == 201
    ids = [await _create_key(srv, "ids") for _ in range(3)]
    deleted = ids[-1]
    assert (await srv.client.delete(f"/admin/keys/{deleted}", headers=srv.auth())
            ).status_code == 200
    assert await _create_key(srv, "ids") == deleted + 1


async def test_an_existing_sqlite_database_is_migrated_to_ids_never_reused(
        inprocess: Callable, tmp_path: Path) -> None:
    """A database made by the previous release (revision 0002): its rows survive the table
    rebuilds (no cascade through foreign keys) and a deleted key's id is not given again."""
    from alembic import command
    from alembic.config import Config

    path = tmp_path / "old.db"
    old = create_engine(f"sqlite+aiosqlite:///{path}")

    def to_0002(sync_conn: Any) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = sync_conn
        command.upgrade(config, "0002")

    async with old.begin() as conn:
        await conn.run_sync(to_0002)
        await conn.execute(text(
            "INSERT INTO accounts (id, name, currency, balance_micros, unlimited, "
            "price_multiplier, created_at) VALUES (7, 'old', 'USD', 500, 0, '1', '2025-01-01')"))
        await conn.execute(text(
            "INSERT INTO ledger_entries (account_id, kind, amount_micros, created_at) "
            "VALUES (7, 'topup', 500, '2025-01-01')"))
        for key_id in (1, 2, 3):
            await conn.execute(text(
                "INSERT INTO api_keys (id, account_id, name, prefix, key_hash, is_admin, "
                f"enabled, created_at) VALUES ({key_id}, 7, 'k', 'p', 'hash{key_id}', 0, 1, "
                "'2025-01-01')"))
    await old.dispose()

    srv = await inprocess(CONFIG, database_url=f"sqlite:///{path}")
    account = (await srv.client.get("/admin/accounts/old", headers=srv.auth())).json()
    assert account["balance_micros"] == 500
    keys = (await srv.client.get("/admin/keys", headers=srv.auth())).json()["data"]
    assert sorted(k["id"] for k in keys)[:3] == [1, 2, 3]  # then the admin key of start-up
    newest = await _create_key(srv, "old")
    assert (await srv.client.delete(f"/admin/keys/{newest}", headers=srv.auth())
            ).status_code == 200
    assert await _create_key(srv, "old") == newest + 1


# --------------------------------------------------------------------------------------------
# 5. Idempotency-Key scoped by endpoint and caller


def _png_data_url() -> str:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 20, 30)).save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


async def test_an_idempotency_key_is_scoped_by_endpoint_and_caller(inprocess: Callable) -> None:
    srv = await inprocess(CONFIG)
    assert (await srv.client.post("/admin/accounts", headers=srv.auth(),
                                  json={"name": "idem"})).status_code == 201
    assert (await srv.client.post("/admin/accounts/idem/topup", headers=srv.auth(),
                                  json={"amount_micros": 20 * UNIT})).status_code == 200
    keys = []
    for _ in range(2):
        response = await srv.client.post("/admin/keys", headers=srv.auth(),
                                         json={"account": "idem", "name": "k"})
        keys.append(response.json()["key"])
    idem = "the-same-key-everywhere"

    async def post(path: str, body: dict, key: str = keys[0]) -> httpx.Response:
        return await srv.client.post(path, json=body, headers={
            "Authorization": f"Bearer {key}", "Idempotency-Key": idem})

    prompt = f"scoped {uuid.uuid4().hex}"
    generation = await post("/v1/images/generations", {"model": "fake-image", "prompt": prompt})
    chat = await post("/v1/chat/completions", {
        "model": "fake-image", "messages": [{"role": "user", "content": prompt}]})
    edit = await post("/v1/images/edits", {"model": "fake-image", "prompt": prompt,
                                           "images": [{"image_url": _png_data_url()}]})
    for response in (generation, chat, edit):
        assert response.status_code == 200, response.text
    assert "data" in generation.json() and "choices" not in generation.json()
    assert chat.json()["object"] == "chat.completion" and "data" not in chat.json()
    assert "data" in edit.json() and edit.json() != generation.json()

    # Each endpoint replays only its own answer.
    assert (await post("/v1/images/generations",
                       {"model": "fake-image", "prompt": prompt})).json() == generation.json()
    assert (await post("/v1/chat/completions", {
        "model": "fake-image", "messages": [{"role": "user", "content": prompt}]}
    )).json() == chat.json()
    # Another API key of the same account has keys of its own.
    other = await post("/v1/images/generations", {"model": "fake-image", "prompt": prompt},
                       key=keys[1])
    assert other.status_code == 200 and other.json() != generation.json()
    assert len(calls(srv.data_dir, prompt)) == 4  # generation, chat, edit, the other key


# --------------------------------------------------------------------------------------------
# 6. the SQLite file is private


async def test_the_sqlite_database_is_readable_by_its_owner_only(inprocess: Callable,
                                                                 tmp_path: Path) -> None:
    srv = await inprocess(CONFIG)
    database = srv.data_dir / "imagegate.db"
    assert database.exists()
    for path in (database, database.with_name("imagegate.db-wal"),
                 database.with_name("imagegate.db-shm")):
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

    # A database left world-readable by an older release is tightened at start-up.
    old = tmp_path / "loose" / "imagegate.db"
    old.parent.mkdir()
    old.touch()
    os.chmod(old, 0o644)
    await inprocess(CONFIG, database_url=f"sqlite:///{old}")
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
