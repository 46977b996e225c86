"""API keys: minting, hashing, and turning a bearer token into a `Caller`.

Only a SHA-256 of each key is stored, with a short visible prefix; the full key exists once, in
the answer to its creation. Keys are 256 random bits, so a fast hash is the right one (there is
nothing to brute-force) and lookups by hash need no per-row salt.

Looked-up keys are cached for `auth_cache_seconds` behind `KeyCache` (limits/): in this process,
or in this process with invalidations over Redis pub/sub, so an admin change on one replica
reaches every replica's cache.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from ..errors import APIError
from ..limits.base import KeyCache
from .tables import Account, ApiKey

KEY_PREFIX = "sk-ig-"
VISIBLE_CHARS = 12
NOT_BEARER = "\0not-bearer"
"""The token of an `Authorization` header without the `Bearer` scheme (`Authorization: KEY`):
refused with a message that says so, rather than "no API key"."""


class InvalidApiKey(APIError):
    status = 401
    code = "invalid_api_key"


class PermissionDenied(APIError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


def mint_key() -> tuple[str, str, str]:
    """(full key, visible prefix, hash)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, key[:VISIBLE_CHARS], hash_key(key)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    """Who is asking, as the request path needs it. Built from one key and its account."""

    key_id: int | None
    account_id: int
    is_admin: bool = False
    allowed_models: tuple[str, ...] | None = None
    rpm_limit: int | None = None
    concurrency_limit: int | None = None
    price_multiplier: Decimal = Decimal(1)
    unlimited: bool = False
    label_producer: str | None = None
    """The account's own `ContentProducer` for AI-content labels; None: the server's."""
    visible_mark: bool | None = None
    """Whether its images get the visible mark (the key's setting, else the account's);
    None: as the server's `labels.visible_mark` says."""

    def check_model(self, model: str) -> None:
        if self.allowed_models is not None and model not in self.allowed_models:
            raise PermissionDenied(f"This API key may not use the model `{model}`.",
                                   param="model", code="model_not_allowed")


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


@dataclass(frozen=True)
class KeyRecord:
    """One key as its row says, checked on every request (the cache keeps these)."""

    caller: Caller
    key_hash: str
    enabled: bool
    expires_at: datetime | None
    networks: Networks | None

    @property
    def key_id(self) -> int | None:
        return self.caller.key_id


class Authenticator:
    """Bearer token -> Caller, through `cache`."""

    def __init__(self, engine: AsyncEngine, cache: KeyCache[KeyRecord]) -> None:
        self.engine = engine
        self.cache = cache

    async def forget(self, key_id: int) -> None:
        """After an admin change to one key: it takes effect at once."""
        await self.cache.forget(key_id)

    async def forget_all(self) -> None:
        """After an admin change that may touch many keys: it takes effect at once."""
        await self.cache.forget_all()

    async def authenticate(self, token: str | None, client_ip: str | None) -> Caller:
        if not token:
            raise InvalidApiKey(
                "You didn't provide an API key. Send it as `Authorization: Bearer YOUR_KEY`.")
        if token == NOT_BEARER:
            raise InvalidApiKey("The Authorization header has no `Bearer` before the key. "
                                "Send it as `Authorization: Bearer YOUR_KEY`.")
        digest = hash_key(token)
        record = await self._lookup(digest)
        # The lookup matched on the hash already; compare again in constant time anyway so no
        # code path branches on a partial match of secret material.
        if record is None or not hmac.compare_digest(record.key_hash, digest):
            raise InvalidApiKey("Incorrect API key provided.")
        if not record.enabled:
            raise InvalidApiKey("This API key has been disabled.")
        if record.expires_at is not None and record.expires_at <= datetime.now(timezone.utc):
            raise InvalidApiKey("This API key has expired.")
        if record.networks is not None and not _ip_allowed(client_ip, record.networks):
            raise PermissionDenied("This API key may not be used from your IP address.",
                                   code="ip_not_allowed")
        return record.caller

    async def _lookup(self, digest: str) -> KeyRecord | None:
        try:
            return self.cache.get(digest)
        except KeyError:
            pass
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                select(ApiKey, Account.unlimited.label("account_unlimited"),
                       Account.price_multiplier.label("account_multiplier"),
                       Account.label_producer.label("account_label_producer"),
                       Account.visible_mark.label("account_visible_mark"))
                .join(Account, Account.id == ApiKey.account_id)
                .where(ApiKey.key_hash == digest))).first()
        record = None if row is None else _record(row)
        self.cache.put(digest, record)
        return record


def _record(key: Any) -> KeyRecord:
    """A row of api_keys joined with its account's `account_unlimited`, `account_multiplier`,
    `account_label_producer` and `account_visible_mark`."""
    networks = None
    if key.allowed_ips is not None:
        networks = tuple(ipaddress.ip_network(net, strict=False) for net in key.allowed_ips)
    expires = key.expires_at
    if expires is not None and expires.tzinfo is None:  # SQLite drops the zone; we store UTC
        expires = expires.replace(tzinfo=timezone.utc)
    caller = Caller(
        key_id=key.id,
        account_id=key.account_id,
        is_admin=key.is_admin,
        allowed_models=tuple(key.allowed_models) if key.allowed_models is not None else None,
        rpm_limit=key.rpm_limit,
        concurrency_limit=key.concurrency_limit,
        price_multiplier=Decimal(key.price_multiplier or key.account_multiplier),
        unlimited=key.account_unlimited,
        label_producer=key.account_label_producer,
        visible_mark=key.visible_mark if key.visible_mark is not None
        else key.account_visible_mark,
    )
    return KeyRecord(caller, key.key_hash, key.enabled, expires, networks)


def _ip_allowed(client_ip: str | None, networks: Networks) -> bool:
    if client_ip is None:
        return False
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    return any(address in net for net in networks)
