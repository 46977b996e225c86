"""The in-process backends: counts, the key cache and the replicas' board kept in this
process's memory. With several replicas each enforces a key's limits on what it alone sees;
the Redis backends (redis.py) share them."""

from __future__ import annotations

import time
from typing import Generic

from cachetools import TTLCache
from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from .base import WINDOW_SECONDS, R, Report

MAX_CACHED_KEYS = 10_000
"""Bounded: unknown tokens are cached too, and must not grow the cache without end."""


class MovingWindow:
    """Requests per key in any `window_seconds`, counted in a `limits` storage."""

    def __init__(self, storage: Storage, window_seconds: int = WINDOW_SECONDS) -> None:
        self._limiter = MovingWindowRateLimiter(storage)
        self.window_seconds = window_seconds

    async def hit(self, key_id: int, limit: int) -> float | None:
        item = RateLimitItemPerSecond(limit, self.window_seconds, namespace="imagegate-rpm")
        if await self._limiter.hit(item, str(key_id)):
            return None
        stats = await self._limiter.get_window_stats(item, str(key_id))
        return max(0.0, stats.reset_time - time.time())


class ProcessLimits:
    """`Limits` counted in this process."""

    def __init__(self, window_seconds: int = WINDOW_SECONDS) -> None:
        self._window = MovingWindow(MemoryStorage(), window_seconds)
        self._active: dict[int, int] = {}
        """Slots taken, per key with requests running (a key leaves it with its last one)."""

    async def hit(self, key_id: int, limit: int) -> float | None:
        return await self._window.hit(key_id, limit)

    async def take_slot(self, key_id: int, limit: int) -> bool:
        active = self._active.get(key_id, 0)  # no await from here to the write: atomic
        if active >= limit:
            return False
        self._active[key_id] = active + 1
        return True

    async def give_slot(self, key_id: int) -> None:
        left = self._active[key_id] - 1
        if left:
            self._active[key_id] = left
        else:
            del self._active[key_id]

    def active(self, key_id: int) -> int:
        """Slots `key_id` holds now."""
        return self._active.get(key_id, 0)


class ProcessKeyCache(Generic[R]):
    """`KeyCache` in this process: at most `maxsize` lookups for `ttl_seconds` each; when full,
    the least recently used one makes room."""

    def __init__(self, ttl_seconds: float, maxsize: int = MAX_CACHED_KEYS) -> None:
        self.ttl_seconds = ttl_seconds
        self._cache: TTLCache[str, R | None] = TTLCache(maxsize, ttl_seconds)

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, digest: str) -> R | None:
        return self._cache[digest]

    def put(self, digest: str, record: R | None) -> None:
        if self.ttl_seconds > 0:  # 0: no caching at all
            self._cache[digest] = record

    async def forget(self, key_id: int) -> None:
        self.drop(key_id)

    async def forget_all(self) -> None:
        self.clear()

    def clear(self) -> None:
        """`forget_all`, synchronously."""
        self._cache.clear()

    def drop(self, key_id: int) -> None:
        """`forget`, synchronously."""
        # An admin action, rare: a scan of the cache beats an index kept in step with evictions.
        for digest in list(self._cache):
            try:
                record = self._cache[digest]
            except KeyError:  # expired meanwhile
                continue
            if record is not None and record.key_id == key_id:
                self._cache.pop(digest, None)


class ProcessReplicas:
    """`ReplicaBoard` of a lone process: nobody else to list (the service adds its own live
    counts to whatever a board lists)."""

    async def publish(self, report: Report) -> None:
        pass

    async def withdraw(self, node_id: str) -> None:
        pass

    async def reports(self) -> list[Report]:
        return []
