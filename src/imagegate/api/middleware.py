"""ASGI middleware: request ids, the body-size cap, retry advice on errors, the answer to requests
a stopping server cuts short, and the last line of defence against 500s.

Written as plain ASGI (not BaseHTTPMiddleware) so streamed responses pass through untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..accounts.database import unreachable
from ..errors import error_body

log = logging.getLogger("imagegate.http")
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Errors that the same request may get past later: a limit, a full queue, a failing upstream.
Every other error (400, 401, 402, 403, 404, 409, 413, ...) needs a different request."""
DEFAULT_RETRY_AFTER_SECONDS = 1
"""Sent with a retryable error that did not estimate its own wait."""


def retry_headers(status: int, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`x-should-retry` (which the OpenAI SDKs obey before their own rules: without it they
    retry every 409, 429 and 5xx up to three times) and, when retrying helps, `Retry-After`.
    An error that already says either (`APIError.retryable`, a measured wait) keeps its own."""
    if status < 400:
        return []
    names = {name.lower() for name, _ in headers}
    extra: list[tuple[bytes, bytes]] = []
    retryable = status in RETRYABLE_STATUSES
    if b"x-should-retry" not in names:
        extra.append((b"x-should-retry", b"true" if retryable else b"false"))
    else:
        retryable = dict((k.lower(), v) for k, v in headers)[b"x-should-retry"] == b"true"
    if retryable and b"retry-after" not in names:
        extra.append((b"retry-after", str(DEFAULT_RETRY_AFTER_SECONDS).encode()))
    return extra


def mark_stopping(app: Starlette) -> None:
    """The server is stopping without waiting for the requests in flight (a second Ctrl-C): a
    request of `app` cancelled from now on was cut short by the server, not by its client, and
    is answered 503 `server_shutting_down`."""
    app.state.stopping = True


def _stopping(scope: Scope) -> bool:
    app = scope.get("app")
    return bool(getattr(getattr(app, "state", None), "stopping", False))


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than the {limit}-byte limit.")


class RequestContextMiddleware:
    """Gives every request a new server-minted id (reservations and usage are keyed on it, so a
    client must not choose it) sent back as `x-request-id`; a sane client id in
    `x-client-request-id` is echoed. Every error says whether a retry can help
    (`retry_headers`). Also enforces the body-size cap, and turns any unhandled exception into
    an OpenAI-style 500 that carries no detail."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        id_headers = [(b"x-request-id", request_id.encode())]
        client_id = headers.get("x-client-request-id", "")
        if _CLIENT_ID_RE.fullmatch(client_id):
            id_headers.append((b"x-client-request-id", client_id.encode()))
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                sent = list(message.get("headers", []))
                sent += [*id_headers, *retry_headers(message["status"], sent)]
                message = {**message, "headers": sent}
            await send(message)

        limit = self.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _send_json(send_with_id, 413, error_body(
                f"The request body is larger than the {limit}-byte limit.",
                type="invalid_request_error", code="request_too_large"))
            return

        seen = 0

        async def capped_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            await self.app(scope, capped_receive, send_with_id)
        except asyncio.CancelledError:
            if not _stopping(scope):
                raise  # someone awaiting this request stopped waiting: theirs to handle
            # One line, and no re-raise: uvicorn would log a traceback for the cancellation and
            # answer a plain-text 500.
            log.warning("request %s cut short: the server is shutting down", request_id)
            if not started:
                await _send_json(send_with_id, 503, error_body(
                    "The server is shutting down and could not finish this request. Retry it "
                    "in a moment.",
                    type="server_error", code="server_shutting_down"))
        except Exception as exc:
            if unreachable(exc):  # not this request's fault, and a retry may well succeed
                log.error("request %s: the database cannot be reached: %s", request_id,
                          " ".join(str(exc).split())[:300])
                if not started:
                    await _send_json(send_with_id, 503, error_body(
                        "The server cannot reach its database right now. Retry in a moment.",
                        type="server_error", code="database_unavailable"))
                return
            log.exception("unhandled error in request %s", request_id)
            if not started:
                await _send_json(send_with_id, 500, error_body(
                    "The server had an error while processing your request. Retry, or contact "
                    f"the operator with the request id {request_id}.",
                    type="server_error"))


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
