"""Per-key request-rate and concurrency limits (in this process).

Counted per server process: with several replicas, each enforces the limit on what it sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator

from ..errors import APIError
from .keys import Caller

WINDOW_SECONDS = 60.0


class RateLimited(APIError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class KeyLimits:
    def __init__(self) -> None:
        self._recent: dict[int, deque[float]] = defaultdict(deque)
        self._active: dict[int, int] = defaultdict(int)
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def slot(self, caller: Caller) -> AsyncIterator[None]:
        """Admit one request for `caller` (or raise 429) and hold its concurrency slot."""
        key = caller.key_id
        if key is None:
            yield
            return
        async with self._lock:
            self._admit_rate(key, caller.rpm_limit)
            limit = caller.concurrency_limit
            if limit is not None and self._active[key] >= limit:
                raise RateLimited(
                    f"This API key allows {limit} concurrent requests; wait for one to finish.",
                    code="concurrency_limit_exceeded", headers={"retry-after": "1"})
            self._active[key] += 1
        try:
            yield
        finally:
            self._active[key] -= 1

    def _admit_rate(self, key: int, rpm: int | None) -> None:
        if rpm is None:
            return
        now = time.monotonic()
        recent = self._recent[key]
        while recent and now - recent[0] >= WINDOW_SECONDS:
            recent.popleft()
        if len(recent) >= rpm:
            wait = max(1, math.ceil(WINDOW_SECONDS - (now - recent[0])))
            raise RateLimited(f"This API key allows {rpm} requests per minute.",
                              headers={"retry-after": str(wait)})
        recent.append(now)
