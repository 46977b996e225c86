"""The accounts side of a server, wired from settings: database, keys (and their cache), ledger,
limits, idempotent answers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from ..settings import Settings
from ..storage import BlobStore
from .admin import ADMIN_ACCOUNT, LOCAL_ACCOUNT, Admin
from .database import create_engine, migrate
from .idempotency import Idempotency, forget_old, release_claims
from .incarnation import Incarnations, NodeIdInUse
from .keys import Authenticator, Caller, ProcessKeyCache
from .ledger import Ledger
from .limits import KeyLimits, ProcessLimits
from .usage import UsageWriter

log = logging.getLogger(__name__)


class AccountSystem:
    def __init__(self, settings: Settings, answers: BlobStore,
                 engine: AsyncEngine | None = None) -> None:
        """`answers`: where idempotent answers with base64 images are kept."""
        self.settings = settings
        self.engine = engine or create_engine(settings.resolved_database_url)
        self.incarnation = Incarnations(self.engine, node_id=settings.resolved_node_id,
                                        lease_seconds=settings.accounts.reservation_lease_seconds)
        self.ledger = Ledger(self.engine, node_id=settings.resolved_node_id,
                             lease_seconds=settings.accounts.reservation_lease_seconds,
                             currency=settings.accounts.currency, incarnation=self.incarnation.id)
        self.admin = Admin(self.engine, self.ledger, settings.accounts.currency)
        self.authenticator = Authenticator(self.engine,
                                           ProcessKeyCache(settings.accounts.auth_cache_seconds))
        self.limits = KeyLimits(ProcessLimits())
        self.usage = UsageWriter(self.engine)
        self.idempotency = Idempotency(self.engine, answers,
                                       wait_seconds=settings.accounts.reservation_lease_seconds,
                                       holder=self.incarnation.id)
        self.auth_enabled = settings.accounts.auth == "on"
        self.local_caller: Caller | None = None

    async def start(self) -> str | None:
        """Migrate, register this process (NodeIdInUse if a live one has its node id), release
        what processes that are gone left held or claimed, and make sure someone can administer
        the server. Returns a newly created admin key, to be shown once."""
        await migrate(self.engine)
        await self.incarnation.begin()
        await self.release_what_the_dead_held(this_node_restarted=True)
        if not self.auth_enabled:
            account_id = await self.admin.ensure_account(LOCAL_ACCOUNT, unlimited=True)
            self.local_caller = Caller(key_id=None, account_id=account_id, is_admin=True,
                                       unlimited=True)
            return None
        if self.settings.accounts.admin_key:
            await self.admin.ensure_admin_key(self.settings.accounts.admin_key)
            return None
        if await self.admin.has_admin_key():
            return None
        await self.admin.ensure_account(ADMIN_ACCOUNT, unlimited=True)
        created = await self.admin.create_key(ADMIN_ACCOUNT, "first admin key", is_admin=True)
        return created.key

    async def authenticate(self, token: str | None, client_ip: str | None) -> Caller:
        if not self.auth_enabled:
            assert self.local_caller is not None, "start() was not awaited"
            return self.local_caller
        return await self.authenticator.authenticate(token, client_ip)

    def background_tasks(self) -> list[Coroutine[Any, Any, None]]:
        return [self.sweep_forever(), self.usage.run_forever()]

    async def release_what_the_dead_held(self, *, this_node_restarted: bool = False) -> None:
        dead = await self.incarnation.dead()
        await self.ledger.release_stale(dead, this_node_restarted=this_node_restarted)
        claims = await release_claims(self.engine, dead)
        if claims:
            log.warning("removed %d Idempotency-Key claims of server processes that are gone",
                        claims)

    async def sweep_forever(self) -> None:
        """Beat this process's heartbeat, release what processes that are gone held (and
        reservations from before incarnations past their lease), and forget idempotent answers
        whose image links have expired (their rows, then their stored bodies)."""
        while True:
            await asyncio.sleep(self.settings.accounts.ledger_sweep_seconds)
            try:
                await self.incarnation.heartbeat()
                await self.release_what_the_dead_held()
                await forget_old(self.engine, done_seconds=self.settings.storage.url_ttl_seconds,
                                 running_seconds=self.settings.accounts.reservation_lease_seconds)
                await asyncio.to_thread(self.idempotency.answers.sweep)
            except Exception:
                log.exception("accounts sweep failed")

    async def close(self) -> None:
        try:
            await self.usage.flush()
        finally:
            await self.incarnation.end()
            await self.engine.dispose()


__all__ = ["AccountSystem", "NodeIdInUse"]
