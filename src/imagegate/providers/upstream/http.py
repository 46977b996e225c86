"""The HTTP client of every upstream call: one aiohttp session per event loop, kept for the
router's life (upstream connections stay open between calls).

Why aiohttp: a relay moves megabytes of base64 per image, and the client's cost per byte is most
of a relay's cost. aiohttp parses HTTP in C and reads a body in the pieces the socket gives (up
to hundreds of KiB at once); httpx parses it in Python, 64 KiB at a time, each piece through
several layers. Reading a 1 MB answer took 7.43 ms of CPU with httpx and 1.20 ms with aiohttp
(same loopback upstream, concurrency 32; `benchmarks/http_clients.py`, BENCHMARKS.md, "Upstream
HTTP client").

Timeouts mean what a deployment's `timeout_seconds` always meant: at most that long to get a
connection (a pooled one, or a new one), and at most that long between two reads of the
answer; no bound on the whole exchange (a slow upstream that keeps sending is not cut off).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
import certifi
import orjson

from ... import __version__

_TLS = ssl.create_default_context(cafile=certifi.where())
"""Upstream certificates are checked against Mozilla's roots (certifi), as httpx does, not the
host's store: a slim container image may have none."""

MAX_CONNECTIONS = 1000
"""Open upstream connections at most, all deployments together (the relay's admission bound,
`upstream_max_in_flight`, is what keeps requests from queueing here)."""


READ_AHEAD_BYTES = 32 * 1024
"""What aiohttp reads of an answer before it is asked for (it buffers up to twice this per
connection, then stops reading the socket). Answers that wait for the read budget (budget.py)
wait mostly in the kernel's socket buffers, not here: with 500 answers of 1 MB landing at once,
the process peaked at 532 MiB with aiohttp's default (64 KiB) and 309 MiB with this, at the same
latency."""


class UpstreamHTTP:
    """The session of the running event loop, made on first use there (an aiohttp session
    belongs to the loop it was made in; a router may outlive a loop in tests and tools)."""

    def __init__(self) -> None:
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            for old in [old for old in self._sessions if old.is_closed()]:
                # Its sockets went with its loop; closing it here only marks it closed.
                task = loop.create_task(self._sessions.pop(old).close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, ssl=_TLS),
                read_bufsize=READ_AHEAD_BYTES,
                trust_env=False,  # no proxy from the environment: deployments name their URL
                timeout=aiohttp.ClientTimeout(total=None),  # each request sets its own
                headers={"User-Agent": f"imagegate/{__version__}"},
            )
            self._sessions[loop] = session
        return session

    def request(self, method: str, url: str, *, headers: Mapping[str, str],
                params: Mapping[str, str] | None, json_body: Any,
                data: Mapping[str, str] | None, files: list[Any] | None,
                timeout: float) -> Any:
        """The exchange as an async context manager of an `aiohttp.ClientResponse` (the body
        unread): a JSON body, or multipart form fields with `files`, each
        `(field, (filename, bytes, content type))`."""
        sent = dict(headers)
        body: Any
        if files:
            form = aiohttp.FormData(quote_fields=False)
            for name, value in (data or {}).items():
                form.add_field(name, value)
            for field, (filename, content, content_type) in files:
                form.add_field(field, content, filename=filename, content_type=content_type)
            body = form
        elif json_body is not None:
            body = orjson.dumps(json_body)
            sent.setdefault("Content-Type", "application/json")
        else:
            body = None
        return self.session().request(
            method, url, headers=sent, params=params, data=body, allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout))

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.items()), {}
        for loop, session in sessions:
            if loop is asyncio.get_running_loop():
                await session.close()
