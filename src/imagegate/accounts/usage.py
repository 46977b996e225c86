"""Usage rows of requests that moved no money, written in batches off the request path.

Charged requests write their usage row inside the settle transaction (ledger.py), so money and
usage never disagree. Everything else (free models, rejected requests) goes through this writer:
one transaction per batch instead of one per request, and no request waits for it. A crash can
lose the last `interval` seconds of these rows; never a charge.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from .ledger import utcnow
from .tables import UsageRecord

log = logging.getLogger(__name__)


# Every column, so that rows of different shapes (a 404 knows no size, a 200 has no error code)
# can share one executemany.
ROW_DEFAULTS: dict[str, Any] = {
    "key_id": None, "account_id": None, "model": None, "deployment": None,
    "upstream_request_id": None, "n": 0,
    "size": None, "quality": None, "images_delivered": 0, "cost_micros": 0,
    "error_code": None, "latency_ms": 0,
}


class UsageWriter:
    def __init__(self, engine: AsyncEngine, interval: float = 0.25, max_batch: int = 500) -> None:
        self.engine = engine
        self.interval = interval
        self.max_batch = max_batch
        self._pending: list[dict[str, Any]] = []
        self._lock = asyncio.Lock()

    def add(self, usage: dict[str, Any]) -> None:
        self._pending.append({**ROW_DEFAULTS, "created_at": utcnow(), **usage})

    async def flush(self) -> None:
        async with self._lock:
            while self._pending:
                batch = self._pending[: self.max_batch]
                try:
                    async with self.engine.begin() as conn:
                        await conn.execute(insert(UsageRecord), batch)
                except IntegrityError:
                    # One bad row (a duplicate request id) must not block the queue for good:
                    # write the rest one by one and drop what can't be written.
                    await self._write_one_by_one(batch)
                del self._pending[: len(batch)]

    async def _write_one_by_one(self, batch: list[dict[str, Any]]) -> None:
        for row in batch:
            try:
                async with self.engine.begin() as conn:
                    await conn.execute(insert(UsageRecord), [row])
            except IntegrityError:
                log.error("dropped a usage row that cannot be written: %s", row.get("request_id"))

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception:
                log.exception("writing usage records failed; will retry")
