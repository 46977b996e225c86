"""`imagegate serve --workers N`: N gateway processes answering on one port.

The supervisor (the process `serve` started in) binds the port, then starts each worker as a
fresh interpreter (multiprocessing's spawn: nothing of the supervisor's memory is shared or
inherited) that builds its own application and serves on the inherited sockets; the kernel
hands each new connection to one of them. Each worker is a server process like any other: its
own incarnation, its own `node_id` (NODE_ID/1 ... NODE_ID/N), its own engine, caches and
counts; whatever must hold across them lives in the database, the image store or Redis.

- The first worker starts alone, the others once it listens: it migrates the database, writes
  the signing secret and creates (and prints, once) the first admin key before any sibling could
  race it.
- Each worker runs in a process group of its own, so Ctrl-C at a terminal reaches only the
  supervisor, which passes every SIGINT or SIGTERM on to each worker exactly once: the first
  lets the requests in flight finish, a second answers them 503 (uvicorn_server.py), as with
  one process. Once all have stopped, the supervisor ends the way one process would.
- A worker that exits while the server runs (a crash, `kill -9`) is replaced; one that fails
  before it listens stops the whole server, since its siblings would fail the same way.
- A worker whose supervisor is gone (killed with `kill -9`) stops on its own, cleanly.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING, cast

import typer

from ..settings import Settings
from .common import fail

if TYPE_CHECKING:
    from .uvicorn_server import Server

log = logging.getLogger(__name__)

_spawn = multiprocessing.get_context("spawn")
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_ORPHAN_CHECK_SECONDS = 1.0


def worker_settings(settings: Settings, index: int) -> Settings:
    """Worker `index`'s settings: the server's, under a node id of its own."""
    accounts = settings.accounts.model_copy(
        update={"node_id": f"{settings.resolved_node_id}/{index}"})
    return settings.model_copy(update={"accounts": accounts})


class _Worker:
    def __init__(self, index: int, process: BaseProcess, started: Connection) -> None:
        self.index = index
        self.process = process
        self.started = started
        """Read end of a pipe: the worker's pid once it listens, end of file if it exits first."""


class Supervisor:
    """Starts `count` workers on `sockets` and keeps them running until a stop signal."""

    def __init__(self, settings: Settings, count: int, sockets: list[socket.socket]) -> None:
        self.settings = settings
        self.count = count
        self.sockets = sockets
        self.workers: dict[int, _Worker] = {}
        self._stop_signal: int | None = None

    def run(self, announce: Callable[[], None]) -> None:
        """Start the workers, call `announce` once all of them listen, replace any that exits,
        and once stopped end as one server process would for that signal (exit status 1 when
        a worker failed to start)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        failed: str | None = None
        try:
            failed = self._start_all()
            if failed is None and self._stop_signal is None:
                announce()
                failed = self._supervise()
            if failed is not None:
                self._forward(signal.SIGTERM)
            for worker in self.workers.values():
                worker.process.join()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if failed is not None:
            fail(failed)
        if self._stop_signal is not None:
            signal.raise_signal(self._stop_signal)  # Ctrl-C: typer's exit status 130, as ever

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stop_signal is None:
            self._stop_signal = signum
        self._forward(signum)  # every one: a second Ctrl-C stops the workers' waiting too

    def _forward(self, signum: int) -> None:
        for worker in list(self.workers.values()):
            if worker.process.pid is not None and worker.process.exitcode is None:
                try:
                    os.kill(worker.process.pid, signum)
                except ProcessLookupError:
                    pass

    def _start(self, index: int) -> _Worker:
        reader, writer = _spawn.Pipe(duplex=False)
        process = _spawn.Process(target=serve_worker, name=f"imagegate-worker-{index}", args=(
            worker_settings(self.settings, index), self.sockets, writer))
        process.start()
        writer.close()  # the worker holds the only write end: its exit is our end of file
        worker = self.workers[index] = _Worker(index, process, reader)
        return worker

    def _start_all(self) -> str | None:
        """The first worker, then once it listens the others; why one failed, if one did."""
        failed = self._until_listening([self._start(1)])
        if failed is not None or self._stop_signal is not None:
            return failed
        return self._until_listening([self._start(i) for i in range(2, self.count + 1)])

    def _until_listening(self, workers: list[_Worker]) -> str | None:
        """Wait until each of `workers` listens, or a stop signal comes (None), or one exits
        first (why, in words)."""
        waiting = {worker.started: worker for worker in workers}
        while waiting and self._stop_signal is None:
            for ready in wait(list(waiting), timeout=0.5):
                pipe = cast(Connection, ready)
                worker = waiting.pop(pipe)
                try:
                    pipe.recv()
                except EOFError:
                    worker.process.join()
                    return (f"worker {worker.index} stopped before it listened (exit status "
                            f"{worker.process.exitcode}); stopping the others")
                finally:
                    pipe.close()
        return None

    def _supervise(self) -> str | None:
        """Replace each worker that exits, until a stop signal; why a replacement failed to
        start, if one did."""
        while self._stop_signal is None:
            by_sentinel = {worker.process.sentinel: worker for worker in self.workers.values()}
            for sentinel in wait(list(by_sentinel), timeout=0.5):
                if self._stop_signal is not None:
                    break
                gone = by_sentinel[cast(int, sentinel)]
                gone.process.join()
                log.warning("worker %d (pid %s) exited with status %s; starting another",
                            gone.index, gone.process.pid, gone.process.exitcode)
                failed = self._until_listening([self._start(gone.index)])
                if failed is not None:
                    return failed
        return None


def serve_worker(settings: Settings, sockets: list[socket.socket], started: Connection) -> None:
    """One worker process: its own application, served on the supervisor's sockets."""
    os.setpgrp()  # signals come from the supervisor only (see the module's docstring)
    import uvicorn

    from ..app import create_app
    from .uvicorn_server import Server, configure_logging

    configure_logging(settings.log_level)
    try:
        application = create_app(settings)
    except ValueError as exc:  # the supervisor built the same app, so hardly ever
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)

    def listening() -> None:
        started.send(os.getpid())
        started.close()

    server = Server(uvicorn.Config(application, host=settings.host, port=settings.port,
                                   log_level=settings.log_level, proxy_headers=False),
                    application, on_started=listening)
    threading.Thread(target=_stop_when_orphaned, args=(server, os.getppid()), daemon=True,
                     name="imagegate-orphan-check").start()
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the Ctrl-C it was stopped by; the supervisor reports it


def _stop_when_orphaned(server: Server, parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_ORPHAN_CHECK_SECONDS)
    log.warning("the supervisor (pid %d) is gone; stopping", parent)
    server.should_exit = True
