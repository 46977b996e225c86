"""Which server processes are alive, so that only a dead one's money and claims are released.

Every `imagegate serve` process is an *incarnation*: a row in `incarnations` with a random id,
written on the reservations and `Idempotency-Key` claims it holds. For as long as it lives it
holds a lock that the operating system or the database gives up when the process dies, however
it dies (`kill -9` included):

    PostgreSQL  a session advisory lock on a connection kept open for the process's life;
                any replica sees it in `pg_locks`
    SQLite      an flock() on .DATABASE.locks/ID.lock beside the database file (SQLite
                is one machine's database, so every process using it can see the lock)

An incarnation is dead when it ended cleanly (`ended_at`), when its lock is free, or, where the
lock cannot be seen (its lock file was removed), when its heartbeat is older than
`reservation_lease_seconds`. Nothing else counts: a live process's reservations are never
released, whatever its `node_id` and however long its requests run.

Two live servers with one `node_id` are a misconfiguration: the second refuses to start
(`NodeIdInUse`), naming the first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .database import sqlite_path
from .ledger import utcnow
from .tables import Incarnation, Reservation

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: liveness falls back to heartbeats
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

ADVISORY_CLASS = 0x1A6E
"""First half of imagegate's PostgreSQL advisory lock keys (the second: a hash of the id)."""
FORGET_ENDED_AFTER = timedelta(days=1)


class NodeIdInUse(RuntimeError):
    """Another live server process already runs under this `node_id`."""


class Locks(Protocol):
    async def hold(self, incarnation: str) -> None: ...
    async def held(self, incarnations: list[str]) -> dict[str, bool | None]:
        """For each id: True (its process lives), False (it is gone), None (cannot tell)."""
    async def check(self) -> None:
        """Make sure this process still holds its lock (a lost connection loses it)."""
    async def forget(self, incarnations: list[str]) -> None:
        """Clean up after processes recorded as ended (FileLocks: their lock files)."""
    async def let_go(self) -> None: ...


class FileLocks:
    """flock() on one file per incarnation beside a SQLite database. The kernel drops the lock
    when the process dies; a lock found free is removed by whoever found it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fd: int | None = None
        self._path: Path | None = None

    async def hold(self, incarnation: str) -> None:
        assert fcntl is not None
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._path = self.folder / f"{incarnation}.lock"
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    async def held(self, incarnations: list[str]) -> dict[str, bool | None]:
        return {one: self._held(one) for one in incarnations}

    def _held(self, incarnation: str, *, remove_if_free: bool = False) -> bool | None:
        if fcntl is None:
            return None
        path = self.folder / f"{incarnation}.lock"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True  # its process holds it (a separate open file: our own lock counts too)
        else:
            if remove_if_free:  # while we hold the lock, so nobody takes a removed file's
                with contextlib.suppress(OSError):
                    path.unlink()
            return False
        finally:
            os.close(fd)

    async def forget(self, incarnations: list[str]) -> None:
        """Remove the lock files of processes recorded as ended."""
        for one in incarnations:
            self._held(one, remove_if_free=True)

    async def check(self) -> None:
        pass  # a file lock cannot be lost while the process lives

    async def let_go(self) -> None:
        if self._fd is not None and self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()
            os.close(self._fd)
            self._fd = None


class AdvisoryLocks:
    """A PostgreSQL session advisory lock on a connection of its own, held for the process's
    life; every server of the database sees it in `pg_locks`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._conn: AsyncConnection | None = None
        self._key: int | None = None

    async def hold(self, incarnation: str) -> None:
        self._key = _lock_key(incarnation)
        self._conn = await self.engine.connect()
        await self._conn.execute(text("SELECT pg_advisory_lock(:c, :o)"),
                                 {"c": ADVISORY_CLASS, "o": self._key})
        await self._conn.commit()  # the lock outlives the transaction; don't idle inside one

    async def held(self, incarnations: list[str]) -> dict[str, bool | None]:
        async with self.engine.connect() as conn:
            keys = set((await conn.execute(text(
                "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND classid = :c AND objsubid = 2 AND database ="
                " (SELECT oid FROM pg_database WHERE datname = current_database())"),
                {"c": ADVISORY_CLASS})).scalars())
        return {one: _lock_key(one) in keys for one in incarnations}

    async def check(self) -> None:
        assert self._conn is not None and self._key is not None
        try:
            await self._conn.execute(text("SELECT 1"))
            await self._conn.commit()
            return
        except Exception:
            log.warning("lost the database connection holding this server's lock; taking it "
                        "again")
        await self.let_go()
        await self.hold_again()

    async def hold_again(self) -> None:
        assert self._key is not None
        self._conn = await self.engine.connect()
        await self._conn.execute(text("SELECT pg_advisory_lock(:c, :o)"),
                                 {"c": ADVISORY_CLASS, "o": self._key})
        await self._conn.commit()

    async def forget(self, incarnations: list[str]) -> None:
        pass  # a session lock leaves nothing behind

    async def let_go(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                # Closed for real, not returned to the pool: ending the session ends the lock.
                await self._conn.invalidate()
                await self._conn.close()
            self._conn = None


class NoLocks:
    """An in-memory SQLite database: one process, nothing to tell apart but heartbeats."""

    async def hold(self, incarnation: str) -> None:
        pass

    async def held(self, incarnations: list[str]) -> dict[str, bool | None]:
        return {one: None for one in incarnations}

    async def check(self) -> None:
        pass

    async def forget(self, incarnations: list[str]) -> None:
        pass

    async def let_go(self) -> None:
        pass


def _lock_key(incarnation: str) -> int:
    return zlib.crc32(incarnation.encode()) & 0x7FFFFFFF


def locks_for(engine: AsyncEngine) -> Locks:
    if engine.dialect.name == "postgresql":
        return AdvisoryLocks(engine)
    path = sqlite_path(str(engine.url))
    if path is None or fcntl is None:
        return NoLocks()
    return FileLocks(path.with_name(f".{path.name}.locks"))  # hidden: not a database file


class Incarnations:
    """This process's incarnation, and the verdict on everyone else's."""

    def __init__(self, engine: AsyncEngine, *, node_id: str, lease_seconds: int) -> None:
        self.engine = engine
        self.node_id = node_id
        self.lease = timedelta(seconds=lease_seconds)
        self.id = uuid.uuid4().hex
        self.locks = locks_for(engine)
        self._began = False

    async def begin(self) -> None:
        """Take this process's lock, then write its row; refuse to run beside a live process
        under the same `node_id` (NodeIdInUse)."""
        await self.locks.hold(self.id)  # before the row: a visible row always has its lock
        now = utcnow()
        async with self.engine.begin() as conn:
            await conn.execute(insert(Incarnation).values(
                id=self.id, node_id=self.node_id, host=socket.gethostname()[:255],
                pid=os.getpid(), started_at=now, heartbeat_at=now))
        self._began = True
        rival = await self._live_namesake()
        if rival is not None:
            await self.end()
            raise NodeIdInUse(_in_use(self.node_id, rival))

    async def check_node_free(self) -> None:
        """NodeIdInUse if a live process runs under this node id (before registering)."""
        rival = await self._live_namesake()
        if rival is not None:
            raise NodeIdInUse(_in_use(self.node_id, rival))

    async def _live_namesake(self) -> Any:
        """The row of another live process under this node id, or None."""
        await self.dead()  # records every process that is gone as ended
        async with self.engine.connect() as conn:
            return (await conn.execute(select(Incarnation).where(
                Incarnation.node_id == self.node_id, Incarnation.id != self.id,
                Incarnation.ended_at.is_(None)))).first()

    async def heartbeat(self) -> None:
        await self.locks.check()
        async with self.engine.begin() as conn:
            await conn.execute(update(Incarnation).where(Incarnation.id == self.id)
                               .values(heartbeat_at=utcnow()))

    async def dead(self) -> list[str]:
        """Ids of every incarnation that provably no longer runs (and may still hold something);
        the newly found ones are marked ended, and long-ended ones without holds forgotten."""
        now = utcnow()
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(
                Incarnation.id, Incarnation.heartbeat_at, Incarnation.ended_at)
                .where(Incarnation.id != self.id))).all()
        open_ = [row for row in rows if row.ended_at is None]
        alive = await self._alive([row.id for row in open_],
                                  {row.id: row.heartbeat_at for row in open_})
        newly_dead = [one for one, lives in alive.items() if not lives]
        if newly_dead:
            async with self.engine.begin() as conn:
                await conn.execute(update(Incarnation).where(Incarnation.id.in_(newly_dead))
                                   .values(ended_at=now))
            await self.locks.forget(newly_dead)
            log.warning("server processes gone without ending: %s", ", ".join(newly_dead))
        await self._forget_old(now)
        return [row.id for row in rows if row.ended_at is not None] + newly_dead

    async def _alive(self, ids: list[str], heartbeats: dict[str, datetime]
                     ) -> dict[str, bool]:
        if not ids:
            return {}
        verdict = await self.locks.held(ids)
        oldest_live = utcnow() - self.lease
        return {one: (held if held is not None else _aware(heartbeats[one]) >= oldest_live)
                for one, held in verdict.items()}

    async def _forget_old(self, now: datetime) -> None:
        still_holding = select(Reservation.incarnation).where(
            Reservation.status == "held", Reservation.incarnation.is_not(None))
        async with self.engine.begin() as conn:
            await conn.execute(delete(Incarnation).where(
                Incarnation.ended_at < now - FORGET_ENDED_AFTER,
                Incarnation.id.not_in(still_holding)))

    async def end(self) -> None:
        """A clean stop: mark the row ended (what it still holds is released by the next
        sweep or start-up of any server), then let go of the lock."""
        if self._began:
            with contextlib.suppress(Exception):
                async with self.engine.begin() as conn:
                    await conn.execute(update(Incarnation).where(Incarnation.id == self.id)
                                       .values(ended_at=utcnow()))
            self._began = False
        await self.locks.let_go()


def _in_use(node_id: str, rival: Incarnation) -> str:
    return (f"node id {node_id!r} is in use by a running server (pid {rival.pid} on "
            f"{rival.host}, started {_aware(rival.started_at):%Y-%m-%d %H:%M:%S} UTC); give each "
            "server its own IMAGEGATE_NODE_ID, or stop that one first")


def _aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns: they are UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
