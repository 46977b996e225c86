"""The accounts side of a server, wired from settings: database, keys, ledger, limits."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from ..settings import Settings
from ..storage import LocalImageStore
from .admin import ADMIN_ACCOUNT, LOCAL_ACCOUNT, Admin
from .database import create_engine, migrate
from .idempotency import Idempotency, forget_old
from .keys import Authenticator, Caller
from .ledger import Ledger
from .limits import KeyLimits
from .usage import UsageWriter

log = logging.getLogger(__name__)


class AccountSystem:
    def __init__(self, settings: Settings, store: LocalImageStore,
                 engine: AsyncEngine | None = None) -> None:
        self.settings = settings
        self.engine = engine or create_engine(settings.resolved_database_url)
        self.ledger = Ledger(self.engine, node_id=settings.resolved_node_id,
                             lease_seconds=settings.reservation_lease_seconds,
                             currency=settings.currency)
        self.admin = Admin(self.engine, self.ledger, settings.currency)
        self.authenticator = Authenticator(self.engine, settings.auth_cache_seconds)
        self.limits = KeyLimits()
        self.usage = UsageWriter(self.engine)
        self.idempotency = Idempotency(self.engine, store,
                                       wait_seconds=settings.reservation_lease_seconds)
        self.auth_enabled = settings.auth == "on"
        self.local_caller: Caller | None = None

    async def start(self) -> str | None:
        """Migrate, release what a previous run of this node left held, and make sure someone
        can administer the server. Returns a newly created admin key, to be shown once."""
        await migrate(self.engine)
        await self.ledger.release_stale(this_node_restarted=True)
        if not self.auth_enabled:
            account_id = await self.admin.ensure_account(LOCAL_ACCOUNT, unlimited=True)
            self.local_caller = Caller(key_id=None, account_id=account_id, is_admin=True,
                                       unlimited=True)
            return None
        if self.settings.admin_key:
            await self.admin.ensure_admin_key(self.settings.admin_key)
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

    def background_tasks(self) -> list:
        return [self.sweep_forever(), self.usage.run_forever()]

    async def sweep_forever(self) -> None:
        """Release reservations whose lease ran out (a node that died and never came back) and
        forget idempotent answers whose image links have expired."""
        while True:
            await asyncio.sleep(self.settings.ledger_sweep_seconds)
            try:
                await self.ledger.release_stale()
                await forget_old(self.engine, done_seconds=self.settings.url_ttl_seconds,
                                 running_seconds=self.settings.reservation_lease_seconds)
            except Exception:
                log.exception("accounts sweep failed")

    async def close(self) -> None:
        await self.usage.flush()
        await self.engine.dispose()
