"""Per-key request-rate and concurrency limits, and the interface their counts live behind.

`KeyLimits` is the policy: which of a key's limits a request meets, and the 429 it gets.
`Limits` is where the counts are kept. `ProcessLimits` keeps them in this process, so with
several replicas each enforces a key's limits on what it sees; a shared backend (Redis) is one
more module implementing `Limits`, whose rate windows can be `MovingWindow` over the `limits`
library's Redis storage.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import Protocol

from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from ..errors import APIError
from .keys import Caller

WINDOW_SECONDS = 60
"""`rpm_limit` counts the requests of any such span (a moving window, not clock minutes)."""


class RateLimited(APIError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class Limits(Protocol):
    """The counts behind a key's limits; each method is atomic on its own."""

    async def hit(self, key_id: int, limit: int) -> float | None:
        """Count one request of `key_id` if fewer than `limit` are in its window: None.
        Otherwise count nothing and say how many seconds until the oldest leaves it."""
        ...

    async def take_slot(self, key_id: int, limit: int) -> bool:
        """Take one of the key's `limit` concurrency slots; False when all are taken."""
        ...

    async def give_slot(self, key_id: int) -> None:
        """Give back a slot this process took for `key_id`."""
        ...


class MovingWindow:
    """Requests per key in any `window_seconds`, counted in a `limits` storage (its memory
    storage here; its Redis storage counts across replicas)."""

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


class KeyLimits:
    """A key's `rpm_limit` and `concurrency_limit`, applied to each request."""

    def __init__(self, counts: Limits | None = None) -> None:
        self.counts: Limits = counts if counts is not None else ProcessLimits()

    @contextlib.asynccontextmanager
    async def slot(self, caller: Caller) -> AsyncIterator[None]:
        """Admit one request for `caller` (or raise 429) and hold its concurrency slot."""
        key = caller.key_id
        if key is None:
            yield
            return
        rpm = caller.rpm_limit
        if rpm is not None:
            wait = await self.counts.hit(key, rpm)
            if wait is not None:
                # Whole seconds, strictly after the oldest request leaves: one at the window's
                # very edge still counts, so a client that waits this long is admitted.
                raise RateLimited(f"This API key allows {rpm} requests per minute.",
                                  headers={"retry-after": str(math.floor(wait) + 1)})
        limit = caller.concurrency_limit
        if limit is None:
            yield
            return
        if not await self.counts.take_slot(key, limit):
            raise RateLimited(
                f"This API key allows {limit} concurrent requests; wait for one to finish.",
                code="concurrency_limit_exceeded", headers={"retry-after": "1"})
        try:
            yield
        finally:
            await self.counts.give_slot(key)
