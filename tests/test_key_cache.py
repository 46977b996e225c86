"""The API-key cache in this process (limits/process.py, behind accounts/keys.py): bounded, least
recently used out one at a time, entries kept for `auth_cache_seconds`, and invalidation per key
or all at once, as the Redis backend (test_shared_limits.py) is also asked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from imagegate.accounts.admin import Admin
from imagegate.accounts.database import create_engine, migrate
from imagegate.accounts.keys import (
    Authenticator,
    Caller,
    InvalidApiKey,
    KeyRecord,
)
from imagegate.accounts.ledger import Ledger
from imagegate.limits.process import ProcessKeyCache


def _record(key_id: int) -> KeyRecord:
    return KeyRecord(Caller(key_id=key_id, account_id=1), f"hash-{key_id}", True, None, None)


def _cached(cache: ProcessKeyCache, digest: str) -> bool:
    try:
        cache.get(digest)
    except KeyError:
        return False
    return True


def test_a_miss_and_a_cached_unknown_token_differ() -> None:
    cache = ProcessKeyCache(ttl_seconds=60)
    with pytest.raises(KeyError):
        cache.get("never-seen")
    cache.put("no-such-key", None)
    assert cache.get("no-such-key") is None


def test_a_full_cache_makes_room_one_entry_at_a_time() -> None:
    cache = ProcessKeyCache(ttl_seconds=60, maxsize=3)
    for i in range(1, 4):
        cache.put(f"d{i}", _record(i))
    assert cache.get("d1") is not None  # used: d2 is now the least recently used
    cache.put("d4", _record(4))
    assert len(cache) == 3
    assert not _cached(cache, "d2")
    assert all(_cached(cache, d) for d in ("d1", "d3", "d4"))  # not cleared wholesale


def test_unknown_tokens_cannot_grow_the_cache_without_end() -> None:
    cache = ProcessKeyCache(ttl_seconds=60, maxsize=100)
    cache.put("real", _record(1))
    for i in range(10_000):
        cache.put(f"bogus-{i}", None)
        assert len(cache) <= 100
    assert _cached(cache, "bogus-9999")


async def test_entries_expire_after_the_ttl() -> None:
    cache = ProcessKeyCache(ttl_seconds=0.2)
    cache.put("d", _record(1))
    assert _cached(cache, "d")
    await asyncio.sleep(0.3)
    assert not _cached(cache, "d")


def test_a_ttl_of_zero_caches_nothing() -> None:
    cache = ProcessKeyCache(ttl_seconds=0)
    cache.put("d", _record(1))
    assert not _cached(cache, "d") and len(cache) == 0


async def test_forget_drops_that_key_only() -> None:
    cache = ProcessKeyCache(ttl_seconds=60)
    cache.put("one", _record(1))
    cache.put("two", _record(2))
    cache.put("nobody", None)
    await cache.forget(1)
    assert not _cached(cache, "one")
    assert _cached(cache, "two") and _cached(cache, "nobody")
    await cache.forget(1)  # already gone: fine
    await cache.forget_all()
    assert len(cache) == 0


# --- the authenticator over a database -------------------------------------------------------


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")
    await migrate(engine)
    yield engine
    await engine.dispose()


async def test_a_change_to_one_key_reaches_it_through_forget(engine: AsyncEngine) -> None:
    admin = Admin(engine, Ledger(engine, node_id="n", lease_seconds=900), "USD")
    await admin.create_account("acct")
    first = await admin.create_key("acct", "first")
    second = await admin.create_key("acct", "second")
    auth = Authenticator(engine, ProcessKeyCache(ttl_seconds=3600))
    for created in (first, second):
        assert (await auth.authenticate(created.key, None)).key_id == created.info["id"]

    for created in (first, second):  # changed in the database, behind the cache's back
        await admin.set_key_enabled(created.info["id"], False)
    assert await auth.authenticate(first.key, None)  # still cached

    await auth.forget(first.info["id"])
    with pytest.raises(InvalidApiKey, match="disabled"):
        await auth.authenticate(first.key, None)
    assert await auth.authenticate(second.key, None)  # the other key's entry is untouched

    await auth.forget_all()
    with pytest.raises(InvalidApiKey, match="disabled"):
        await auth.authenticate(second.key, None)
