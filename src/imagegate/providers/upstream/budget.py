"""`AnswerBudget`: how many bytes of upstream answers are read into memory at once.

Relayed requests wait on their upstreams together, and their answers can land together: five
hundred 1 MB images arriving in the same second would all be read at once, in pieces, each into
its own buffer, half a gigabyte before the first is done. Under the budget a body is read only
when its size fits; the others wait where they are, in the sockets (the kernel's buffers and
the upstream's), and are read as the first ones are parsed. The server's memory then grows with
the budget, not with the requests in flight, and no throughput is lost: reading and parsing are
CPU-bound on one event loop, so the bodies that wait would not have been read sooner.

One per router (so per event loop), of `upstream.read_budget_bytes`. Waiters are served first
come, first served. The default, 24 MiB, holds about twenty 1 MB images' answers, or one 4K
image's; an answer larger than the budget is read alone. With 500 answers of 1 MB landing at
once, the server's peak RSS was 1.4 GB unbounded, 474 MiB with 64 MiB, 324 MiB with 24 MiB, in
the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

DEFAULT_BYTES = 24 * 1024 * 1024
"""`upstream.read_budget_bytes`' default."""


class AnswerBudget:
    def __init__(self, limit: int = DEFAULT_BYTES) -> None:
        self.limit = limit
        self.used = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """`size` bytes of the budget for the block (one body larger than the whole budget
        takes all of it, alone)."""
        size = max(1, min(size, self.limit))
        if self._waiting or self.used + size > self.limit:
            granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (size, granted)
            self._waiting.append(entry)
            try:
                await granted
            except BaseException:
                if granted.done() and not granted.cancelled():
                    self._release(size)  # granted as it was cancelled: pass it on
                else:
                    with contextlib.suppress(ValueError):  # (unless _grant dropped it)
                        self._waiting.remove(entry)
                    self._grant()  # it may have been the one holding the queue up
                raise
        else:
            self.used += size
        try:
            yield
        finally:
            self._release(size)

    def _release(self, size: int) -> None:
        self.used -= size
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self.used + self._waiting[0][0] <= self.limit:
            size, granted = self._waiting.popleft()
            if granted.done():
                continue  # cancelled while it waited
            self.used += size  # handed over here, so no newcomer slips in before it wakes
            granted.set_result(None)
