"""The async SQLAlchemy engine: SQLite (embedded default) or PostgreSQL, migrated on start-up."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")
"""Files SQLite keeps beside the database; they hold the same data."""


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other databases and in-memory ones."""
    if not url.startswith("sqlite"):
        return None
    path = url.split(":///", 1)[-1].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database could not be reached (down, restarting, refusing new
    connections, out of connection slots, a pool with none free in time), as opposed to a
    statement that failed: a connect that fails carries no statement."""
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, PoolTimeout | ConnectionError):
        return True
    return isinstance(exc, DBAPIError) and (exc.connection_invalidated or exc.statement is None)


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            keep_private(path)
        engine = create_async_engine(url, pool_size=8, max_overflow=8)
        _tune_sqlite(engine)
        return engine
    return create_async_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


def keep_private(path: Path) -> None:
    """The database holds key hashes, balances and usage: readable by its owner only (0600),
    like the URL secret. Created so before SQLite opens it (SQLite gives its -wal and -shm
    files the database's mode); an existing one, and its companions, are tightened."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    except OSError:
        return  # read-only or missing folder: SQLite will say so on first use
    for file in (path, *(path.with_name(path.name + suffix) for suffix in SQLITE_COMPANIONS)):
        try:
            if file.stat().st_mode & 0o077:
                file.chmod(0o600)
        except OSError:  # absent, or not ours to change
            pass


def _tune_sqlite(engine: AsyncEngine, *, foreign_keys: bool = True) -> None:
    """WAL for concurrent readers; IMMEDIATE transactions so that two writers queue on the
    busy timeout instead of failing when one upgrades a read lock to a write lock."""

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest Alembic revision.

    SQLite runs it on a connection of its own with foreign keys off: a migration that rebuilds
    a table drops the old one, which with foreign keys on would cascade into every table that
    refers to it. The references are checked before the migration commits."""
    if sqlite_path(str(engine.url)) is None:  # PostgreSQL, or an empty in-memory database
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade)
        return
    migrator = create_async_engine(engine.url, poolclass=NullPool)
    _tune_sqlite(migrator, foreign_keys=False)
    try:
        async with migrator.begin() as conn:
            await conn.run_sync(_upgrade)
            broken = (await conn.execute(text("PRAGMA foreign_key_check"))).first()
            if broken is not None:
                raise RuntimeError(f"migration left a broken reference: {tuple(broken)}")
    finally:
        await migrator.dispose()


def _upgrade(sync_connection) -> None:  # type: ignore[no-untyped-def]
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = sync_connection
    command.upgrade(config, "head")
