"""An asyncio event loop on a virtual clock: whenever nothing is ready to run, the clock jumps to
the loop's next timer instead of waiting for it. Sleeps, timeouts and deadlines take no real time
and end exactly in the order their times say, however busy the machine is.

Only for code that waits on nothing but the loop's own timers and tasks: an answer from a thread
or a socket would arrive after a jump that did not wait for it.
"""

from __future__ import annotations

import asyncio
import selectors


class _JumpingSelector(selectors.DefaultSelector):
    """Asked to wait for I/O until the next timer, moves the loop's clock on to it instead."""

    def __init__(self, loop: VirtualClockLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: only I/O can wake the loop
            return super().select(None)
        self._loop.advance(timeout)
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """`time()` starts at 0 and moves only by jumps to the next timer (or `advance`)."""

    def __init__(self) -> None:
        self._virtual_now = 0.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        self._virtual_now += max(0.0, seconds)
