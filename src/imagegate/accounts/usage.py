"""Usage rows of requests that moved no money, written in batches off the request path.

Charged requests write their usage row inside the settle transaction (ledger.py), so money and
usage never disagree. Everything else (free models, rejected requests) goes through this writer:
one transaction per batch instead of one per request, and no request waits for it. A crash can
lose the last `interval` seconds of these rows; never a charge.

No row can block the others: rows are made safe when queued (usage_rows.py), and a batch the
database refuses is written again row by row, setting aside (in `usage_rejects`, with one ERROR
line) each row it still refuses. Only a database that cannot be reached keeps rows queued; that
is logged once per outage, not once per retry.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine

from .ledger import utcnow
from .tables import UsageRecord
from .usage_rows import record_reject, safe_usage

log = logging.getLogger(__name__)


# Every column, so that rows of different shapes (a 404 knows no size, a 200 has no error code)
# can share one executemany.
ROW_DEFAULTS: dict[str, Any] = {
    "key_id": None, "account_id": None, "model": None, "deployment": None,
    "upstream_request_id": None, "n": 0,
    "size": None, "quality": None, "images_delivered": 0, "cost_micros": 0,
    "error_code": None, "latency_ms": 0,
}


class DatabaseUnavailable(Exception):
    """The database could not be reached: the rows stay queued for the next flush."""


class UsageWriter:
    def __init__(self, engine: AsyncEngine, interval: float = 0.25, max_batch: int = 500) -> None:
        self.engine = engine
        self.interval = interval
        self.max_batch = max_batch
        self._pending: list[dict[str, Any]] = []
        self._lock = asyncio.Lock()
        self.rejected = 0
        """Rows set aside in usage_rejects since start-up."""
        self._outage = False

    def add(self, usage: dict[str, Any]) -> None:
        self._pending.append(safe_usage({**ROW_DEFAULTS, "created_at": utcnow(), **usage}))

    async def flush(self) -> None:
        """Write every queued row, or set it aside; raises DatabaseUnavailable (rows kept) only
        when the database cannot be reached."""
        async with self._lock:
            while self._pending:
                batch = self._pending[: self.max_batch]
                try:
                    await self._insert(batch)
                except Exception as exc:
                    if _unreachable(exc) or not await self._reachable():
                        raise DatabaseUnavailable(str(exc)) from exc
                    await self._write_one_by_one(batch)
                del self._pending[: len(batch)]

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(UsageRecord), rows)

    async def _write_one_by_one(self, batch: list[dict[str, Any]]) -> None:
        """The batch failed on some row: write each alone, and set aside the ones refused."""
        for done, row in enumerate(batch):
            try:
                await self._insert([row])
                continue
            except Exception as exc:
                refusal = exc
            try:
                if _unreachable(refusal) or not await self._reachable():
                    raise DatabaseUnavailable(str(refusal)) from refusal
                await self._set_aside(row, refusal)
            except BaseException:
                del self._pending[:done]  # keep only the rows not yet written
                raise

    async def _set_aside(self, row: dict[str, Any], refusal: Exception) -> None:
        try:
            async with self.engine.begin() as conn:
                await record_reject(conn, row, refusal)
        except Exception as exc:
            if _unreachable(exc) or not await self._reachable():
                raise
            log.exception("dropped a usage row that could be neither stored nor set aside")
        self.rejected += 1

    async def _reachable(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception as exc:
                if not self._outage:
                    log.error("writing usage records failed (%s); %d rows kept, retrying "
                              "quietly until the database answers", type(exc).__name__,
                              len(self._pending))
                self._outage = True
            else:
                if self._outage:
                    log.warning("usage records are being written again")
                self._outage = False


def _unreachable(exc: BaseException) -> bool:
    """Errors that say the database is away or busy, not that a row is bad."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (OperationalError, InterfaceError, PoolTimeout, OSError,
                            asyncio.TimeoutError))
