"""Per-key request-rate and concurrency limits: `KeyLimits`, the policy (which of a key's limits
a request meets, and the 429 it gets), over `Limits`, where the counts are kept (limits/: in this
process, or in Redis so that every replica counts the same).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator

from ..errors import APIError
from ..limits.base import Limits
from ..limits.process import ProcessLimits
from .keys import Caller


class RateLimited(APIError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class KeyLimits:
    """A key's `rpm_limit` and `concurrency_limit`, applied to each request."""

    def __init__(self, counts: Limits | None = None) -> None:
        self.counts: Limits = counts if counts is not None else ProcessLimits()

    @contextlib.asynccontextmanager
    async def slot(self, caller: Caller) -> AsyncIterator[None]:
        """Admit one request for `caller` (or raise 429) and hold its concurrency slot.
        `LimitsUnavailable` (503) when the counts cannot be reached: a key with limits is
        refused rather than let through uncounted; a key without any never asks."""
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
