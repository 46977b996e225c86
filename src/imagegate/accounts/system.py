"""The accounts side of a server, wired from settings: database, keys (and their cache), ledger,
limits, idempotent answers, and the board of replicas' counts. The key cache, the limits' counts
and the board live in this process, or in Redis when `[limits] redis_url` is set."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from ..limits.base import KeyCache, Limits, ReplicaBoard
from ..limits.process import ProcessKeyCache, ProcessLimits, ProcessReplicas
from ..settings import Settings
from ..storage import BlobStore
from .admin import ADMIN_ACCOUNT, LOCAL_ACCOUNT, Admin
from .database import create_engine, migrate
from .idempotency import Idempotency, forget_old, release_claims
from .incarnation import Incarnations, NodeIdInUse
from .keys import Authenticator, Caller, KeyRecord
from .ledger import Ledger
from .limits import KeyLimits
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
        self._shared_tasks: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._closers: list[Callable[[], Awaitable[Any]]] = []
        counts, cache, self.replicas = self._shared_state()
        self.authenticator = Authenticator(self.engine, cache)
        self.limits = KeyLimits(counts)
        self.usage = UsageWriter(self.engine)
        self.idempotency = Idempotency(self.engine, answers,
                                       wait_seconds=settings.accounts.reservation_lease_seconds,
                                       holder=self.incarnation.id)
        self.auth_enabled = settings.accounts.auth == "on"
        self.local_caller: Caller | None = None

    def _shared_state(self) -> tuple[Limits, KeyCache[KeyRecord], ReplicaBoard]:
        """The limits' counts, the key cache and the replicas' board: in this process, or
        shared through Redis (its client library is imported only then)."""
        limits = self.settings.limits
        cache_seconds = self.settings.accounts.auth_cache_seconds
        if limits.redis_url is None:
            return ProcessLimits(), ProcessKeyCache(cache_seconds), ProcessReplicas()
        from ..limits import redis

        client = redis.connect(limits.redis_url, limits.redis_timeout_seconds)
        listener = redis.connect(limits.redis_url, limits.redis_timeout_seconds, retries=0)
        counts = redis.RedisLimits(client, limits.redis_prefix,
                                   lease_seconds=limits.slot_lease_seconds)
        cache: redis.RedisKeyCache[KeyRecord] = redis.RedisKeyCache(
            client, listener, limits.redis_prefix, cache_seconds)
        board = redis.RedisReplicas(client, limits.redis_prefix,
                                    3 * limits.report_interval_seconds)
        self._shared_tasks += [counts.renew_forever, cache.listen_forever]
        self._closers += [client.aclose, listener.aclose]
        return counts, cache, board

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
        return [self.sweep_forever(), self.usage.run_forever(),
                *(task() for task in self._shared_tasks)]

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
            try:
                await self.incarnation.end()
                await self.engine.dispose()
            finally:
                with contextlib.suppress(Exception):  # else it drops off when its report expires
                    await self.replicas.withdraw(self.settings.resolved_node_id)
                for close in self._closers:
                    await close()


__all__ = ["AccountSystem", "NodeIdInUse"]
