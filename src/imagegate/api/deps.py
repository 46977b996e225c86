"""Small request-scoped helpers shared by the routers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request

from ..accounts.keys import Caller, PermissionDenied
from ..service import ImageService
from ..settings import Settings


def service(request: Request) -> ImageService:
    return request.app.state.service


def settings(request: Request) -> Settings:
    return request.app.state.settings


def request_id(request: Request) -> str:
    return request.scope["state"]["request_id"]


def public_base_url(request: Request) -> str:
    """Where image links point: the configured public URL, else the host the client called."""
    configured = request.app.state.settings.public_url
    return (configured or str(request.base_url)).rstrip("/")


async def caller(request: Request) -> Caller:
    """The authenticated caller: `Authorization: Bearer KEY` or `x-api-key: KEY` (401/403)."""
    accounts = request.app.state.service.accounts
    client_ip = request.client.host if request.client else None
    return await accounts.authenticate(bearer_token(request), client_ip)


async def admin(request: Request) -> Caller:
    who = await caller(request)
    if not who.is_admin:
        raise PermissionDenied("This endpoint needs an admin API key.", code="admin_only")
    return who


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


async def once_per_idempotency_key(request: Request, who: Caller,
                                   produce: Callable[[], Awaitable[dict[str, Any]]]
                                   ) -> dict[str, Any]:
    """Run `produce`, or replay its first answer when the client retries with the same
    `Idempotency-Key` (charged once)."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return await produce()
    idempotency = request.app.state.service.accounts.idempotency
    return await idempotency.run(who.account_id, key, await request.body(), produce)
