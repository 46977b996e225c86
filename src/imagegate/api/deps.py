"""Small request-scoped helpers shared by the routers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request

from ..accounts.idempotency import Scope as IdempotencyScope
from ..accounts.keys import NOT_BEARER, Caller, PermissionDenied
from ..service import ImageService
from ..settings import Settings

T = TypeVar("T")


def service(request: Request) -> ImageService:
    service: ImageService = request.app.state.service
    return service


def settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def request_id(request: Request) -> str:
    request_id: str = request.scope["state"]["request_id"]
    return request_id


def public_base_url(request: Request) -> str:
    """Where image links point: the configured public URL, else the host the client called."""
    configured = request.app.state.settings.public_url
    return (configured or str(request.base_url)).rstrip("/")


async def caller(request: Request) -> Caller:
    """The authenticated caller: `Authorization: Bearer KEY` or `x-api-key: KEY` (401/403)."""
    client_ip = request.client.host if request.client else None
    return await service(request).authenticate(bearer_token(request), client_ip)


async def admin(request: Request) -> Caller:
    who = await caller(request)
    if not who.is_admin:
        raise PermissionDenied("This endpoint needs an admin API key.", code="admin_only")
    return who


def bearer_token(request: Request) -> str | None:
    """The key sent, None when none was; `NOT_BEARER` for `Authorization: KEY` (no scheme)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if request.headers.get("x-api-key"):
        return request.headers["x-api-key"]
    if scheme and scheme.lower() != "bearer" and not token.strip():  # a key, no scheme
        return NOT_BEARER
    return None


async def once_per_idempotency_key(request: Request, who: Caller,
                                   produce: Callable[[], Awaitable[dict[str, Any]]]
                                   ) -> dict[str, Any]:
    """Run `produce`, or replay its first answer when the client retries with the same
    `Idempotency-Key` (charged once). Either way, stop if the client goes away. A key is the
    caller's (account and API key) for this endpoint only: the same key elsewhere is another
    request, so an answer is never replayed in another endpoint's shape."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return await until_disconnected(request, produce())
    # Multipart endpoints leave a fingerprint of what they parsed (their body was streamed).
    body = getattr(request.state, "fingerprint", None) or await request.body()
    scope = IdempotencyScope(account_id=who.account_id, key_id=who.key_id,
                             endpoint=_endpoint_name(request))
    return await until_disconnected(request, service(request).once_per_key(scope, key, body,
                                                                           produce))


def _endpoint_name(request: Request) -> str:
    """The route's path without the /v1 prefix: /v1/images/edits and /images/edits are one."""
    route = request.scope.get("route")
    path = getattr(route, "path", None) or request.url.path
    return path.removeprefix("/v1")


class ClientDisconnected(Exception):
    """The client closed the connection before its answer was ready."""


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, letting it go if the client disconnects first: a queued local job never
    runs and a running one stops, not charged (service.py releases its reservation); a job
    already sent to an upstream is finished without the client and charged, and `work` (an
    Idempotency-Key's answer included) completes (service.py). A request that is itself
    cancelled (a forced stop) lets its work go the same way."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the request itself was cancelled
        if not task.done():
            service(request).let_go(task)
        raise
    finally:
        watcher.cancel()
    if not task.done():
        service(request).let_go(task)
        raise ClientDisconnected()
    return task.result()


async def wait_for_disconnect(request: Request) -> None:
    # The body has been read, so the next ASGI message can only be the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
