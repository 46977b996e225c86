"""uvicorn's server, with a second Ctrl-C that answers the requests in flight instead of
dropping them."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI

from ..api.middleware import mark_stopping

_ROUNDS = 2
"""A job already handed to an upstream finishes for its client after one cancel and stops on
the second (service.py)."""
_ROUND_SECONDS = 5.0


class Server(uvicorn.Server):
    """The first Ctrl-C waits for the requests in flight (uvicorn's graceful shutdown). On the
    second, uvicorn stops waiting, skips the application's shutdown and leaves the requests to
    be cancelled as its event loop closes, which answered each a plain-text 500 and logged
    tracebacks. Here the app is marked as stopping and everything the requests started is
    cancelled while the loop still runs, so each request is answered 503 in the API's error
    envelope (api/middleware.py); then the application's shutdown runs after all."""

    def __init__(self, config: uvicorn.Config, app: FastAPI,
                 on_started: Callable[[], None] | None = None) -> None:
        """`on_started`: called once the application has started and the server listens (a
        worker tells its supervisor so)."""
        super().__init__(config)
        self._app = app
        self._on_started = on_started
        self._resident: set[asyncio.Task[Any]] = set()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        # What runs for the server's whole life (its loop, the app's background jobs): any
        # task newer than these was started by a request.
        self._resident = asyncio.all_tasks()
        if self.started and self._on_started is not None:
            self._on_started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets=sockets)
        if not self.force_exit:
            return
        await self._stop_requests()
        finished = getattr(self.lifespan, "shutdown_event", None)
        if finished is not None and not finished.is_set():
            await self.lifespan.shutdown()

    async def _stop_requests(self) -> None:
        mark_stopping(self._app)
        # Taken once: what a cancelled request starts on its way out (giving back a
        # reservation) is left to finish.
        started = asyncio.all_tasks() - self._resident - {asyncio.current_task()}
        for _ in range(_ROUNDS):
            running = {task for task in started if not task.done()}
            if not running:
                return
            for task in running:
                task.cancel()
            await asyncio.wait(running, timeout=_ROUND_SECONDS)


def configure_logging(level: str) -> None:
    """imagegate's own loggers, alongside uvicorn's."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    logger = logging.getLogger("imagegate")
    logger.addHandler(handler)
    logger.setLevel(5 if level == "trace" else level.upper())
