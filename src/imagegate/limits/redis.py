"""The Redis backends: per-key rate windows and concurrency slots shared by every replica, the
key cache's invalidations over pub/sub, and the board where replicas post their counts.

Rate windows and slots are sorted sets changed by Lua scripts, one round trip each, rather than
the `limits` library's Redis storage: the check and the count happen in one atomic step on the
Redis server's clock (replicas' clocks may differ; Redis has one), a refusal's wait comes from
the same step, the keys carry the configured prefix, and redis-py is the only client library.

Slots are leases: each is a member scored by the end of its lease, renewed by its holder every
third of the lease while its request runs, so a replica that dies holding one (kill -9, a lost
host) frees it when the lease runs out, and a holder that cannot reach Redis loses it no later.

Redis down: `hit` and `take_slot` raise `LimitsUnavailable` (503 `limits_unavailable`), so keys
with limits fail closed; keys without limits never ask. The key cache keeps its local entries
for their TTL and, since invalidations may have been missed, drops them all once it hears Redis
again. Each outage is logged once, when it begins, and once when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import uuid
from collections.abc import Callable
from typing import Any, Generic

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .base import WINDOW_SECONDS, LimitsUnavailable, R, Report
from .process import MAX_CACHED_KEYS, ProcessKeyCache

log = logging.getLogger(__name__)

Clock = Callable[[], float]

UNREACHABLE = (RedisError, OSError)
"""What a call to an unreachable (or failing) Redis raises."""

_NOW = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function f(x) return string.format('%.6f', x) end
"""
"""Every script's ARGV[1]: the time in seconds, or '' for the Redis server's own clock."""

_HIT = _NOW + """
-- KEYS[1]: the key's window, one member per request counted, scored by its time.
-- ARGV: now, limit, window seconds, a member unique to this request.
local window = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. f(now - window))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], f(now), ARGV[4])
  redis.call('EXPIRE', KEYS[1], math.ceil(window) + 1)
  return false
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return f(tonumber(oldest[2]) + window - now)
"""
"""Count a request unless `limit` are in the window (nil); else the seconds until the oldest
leaves it. A request exactly `window` old still counts, as in the in-process window."""

_TAKE = _NOW + """
-- KEYS[1]: the key's slots, one member per slot held, scored by the end of its lease.
-- ARGV: now, limit, lease seconds, the slot's token.
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', f(now))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], f(now + lease), ARGV[4])
redis.call('EXPIRE', KEYS[1], math.ceil(lease) + 1)
return 1
"""

_RENEW = _NOW + """
-- KEYS[1]: the key's slots. ARGV: now, lease seconds, the tokens this holder holds.
-- XX: a slot whose lease ran out and was taken from the set stays gone.
local lease = tonumber(ARGV[2])
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', f(now + lease), ARGV[i])
end
redis.call('EXPIRE', KEYS[1], math.ceil(lease) + 1)
return 0
"""


def connect(url: str, timeout_seconds: float, *, retries: int = 1) -> Redis:
    """A client that gives up quickly: `timeout_seconds` per connect and per reply, and
    `retries` immediate retries (one gets past a pooled connection Redis closed)."""
    return Redis.from_url(url, socket_timeout=timeout_seconds,
                          socket_connect_timeout=timeout_seconds,
                          retry=Retry(NoBackoff(), retries))


class Outage:
    """Logs an outage of `what` once when it begins and once when it ends."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.down = False

    def failed(self, exc: BaseException, consequence: str) -> None:
        if not self.down:
            self.down = True
            log.warning("Redis unreachable for %s (%s: %s): %s", self.what,
                        type(exc).__name__, exc, consequence)

    def ok(self) -> None:
        if self.down:
            self.down = False
            log.warning("Redis reachable again for %s", self.what)


class RedisLimits:
    """`Limits` counted in Redis: every replica on the same Redis and prefix shares them."""

    def __init__(self, client: Redis, prefix: str, *, lease_seconds: float = 30.0,
                 window_seconds: int = WINDOW_SECONDS, clock: Clock | None = None) -> None:
        """`clock`: None for the Redis server's clock (the one to use: every replica reads the
        same); a function for tests that move time themselves."""
        self._client = client
        self._prefix = prefix
        self.lease_seconds = lease_seconds
        self.window_seconds = window_seconds
        self._clock = clock
        self._hit = client.register_script(_HIT)
        self._take = client.register_script(_TAKE)
        self._renew = client.register_script(_RENEW)
        self._holder = uuid.uuid4().hex
        self._serial = itertools.count()
        self._held: dict[int, list[str]] = {}
        """Tokens of the slots this process holds, per key (any one of a key's will do to give
        back: they are alike)."""
        self._outage = Outage("rate and concurrency limits")

    def _now(self) -> str:
        return "" if self._clock is None else repr(self._clock())

    def _token(self) -> str:
        return f"{self._holder}:{next(self._serial)}"

    async def hit(self, key_id: int, limit: int) -> float | None:
        try:
            wait = await self._hit(keys=[f"{self._prefix}rpm:{key_id}"],
                                   args=[self._now(), limit, self.window_seconds, self._token()])
        except UNREACHABLE as exc:
            raise self._unavailable(exc) from None
        self._outage.ok()
        return None if wait is None else max(0.0, float(wait))

    async def take_slot(self, key_id: int, limit: int) -> bool:
        token = self._token()
        try:
            taken = await self._take(keys=[self._slots(key_id)],
                                     args=[self._now(), limit, self.lease_seconds, token])
        except UNREACHABLE as exc:
            raise self._unavailable(exc) from None
        self._outage.ok()
        if taken:
            self._held.setdefault(key_id, []).append(token)
        return bool(taken)

    async def give_slot(self, key_id: int) -> None:
        tokens = self._held[key_id]
        token = tokens.pop()
        if not tokens:
            del self._held[key_id]
        try:
            await self._client.zrem(self._slots(key_id), token)
        except UNREACHABLE as exc:
            self._outage.failed(exc, "a slot that cannot be given back frees when its lease "
                                f"ends ({self.lease_seconds:g} s)")

    def held(self, key_id: int) -> int:
        """Slots `key_id` holds through this process now."""
        return len(self._held.get(key_id, ()))

    async def active(self, key_id: int) -> int:
        """Slots `key_id` holds across all replicas now (leases still running)."""
        now = self._clock() if self._clock is not None else await self._server_time()
        return int(await self._client.zcount(self._slots(key_id), f"({now}", "+inf"))

    async def renew(self) -> None:
        """Extend the lease of every slot this process holds."""
        for key_id, tokens in list(self._held.items()):
            await self._renew(keys=[self._slots(key_id)],
                              args=[self._now(), self.lease_seconds, *tokens])

    async def renew_forever(self) -> None:
        """Keep this process's slots: renewed every third of the lease, so a renewal may fail
        twice before one is lost."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self.renew()
            except UNREACHABLE as exc:
                self._outage.failed(exc, "slots held now are kept only until their leases end")
            else:
                if self._held:
                    self._outage.ok()

    def _slots(self, key_id: int) -> str:
        return f"{self._prefix}slots:{key_id}"

    async def _server_time(self) -> float:
        seconds, micros = await self._client.time()
        return float(seconds) + micros / 1_000_000

    def _unavailable(self, exc: BaseException) -> LimitsUnavailable:
        self._outage.failed(exc, "requests of keys with limits get 503 limits_unavailable")
        return LimitsUnavailable()


async def announce_key_change(url: str, prefix: str, timeout_seconds: float,
                              key_id: int) -> bool:
    """Tell every replica's key cache to forget `key_id` (for a change made outside a server,
    by the operator CLI). False when Redis could not be reached."""
    client = connect(url, timeout_seconds)
    try:
        await client.publish(key_channel(prefix), f"key {key_id}")
        return True
    except UNREACHABLE:
        return False
    finally:
        await client.aclose()


def key_channel(prefix: str) -> str:
    """The channel key-cache invalidations go out on."""
    return f"{prefix}keys"


class RedisKeyCache(Generic[R]):
    """`KeyCache` kept in this process (a TTL cache, as `ProcessKeyCache`) and invalidated
    across replicas: `forget` publishes on one channel every replica listens to."""

    def __init__(self, client: Redis, listener: Redis, prefix: str, ttl_seconds: float,
                 maxsize: int = MAX_CACHED_KEYS) -> None:
        """`listener`: a client of its own for the subscription, without retries, so that
        every lost connection is seen (what was published meanwhile is missed)."""
        self.local: ProcessKeyCache[R] = ProcessKeyCache(ttl_seconds, maxsize)
        self.channel = key_channel(prefix)
        self._client = client
        self._listener = listener
        self.listening = asyncio.Event()
        """Set while subscribed (tests wait for it before they publish)."""
        self._outage = Outage("the API-key cache's invalidations")

    def __len__(self) -> int:
        return len(self.local)

    def get(self, digest: str) -> R | None:
        return self.local.get(digest)

    def put(self, digest: str, record: R | None) -> None:
        self.local.put(digest, record)

    async def forget(self, key_id: int) -> None:
        self.local.drop(key_id)
        await self._publish(f"key {key_id}")

    async def forget_all(self) -> None:
        await self.local.forget_all()
        await self._publish("all")

    async def _publish(self, message: str) -> None:
        try:
            await self._client.publish(self.channel, message)
        except UNREACHABLE as exc:
            self._outage.failed(exc, "other replicas see key changes when their cached "
                                f"entries expire ({self.local.ttl_seconds:g} s)")

    def _received(self, data: Any) -> None:
        text = data.decode() if isinstance(data, bytes) else str(data)
        kind, _, rest = text.partition(" ")
        if kind == "key" and rest.isdigit():
            self.local.drop(int(rest))
        else:  # "all", or anything this version does not know: the safe side
            self.local.clear()

    async def listen_forever(self, retry_seconds: float = 1.0) -> None:
        """Apply every replica's invalidations to the local cache. After a lost subscription
        everything cached is dropped, since what was published meanwhile was missed."""
        while True:
            pubsub = self._listener.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.local.clear()  # nothing heard before this moment
                self._outage.ok()
                self.listening.set()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._received(message["data"])
            except UNREACHABLE as exc:
                self.listening.clear()
                self._outage.failed(exc, "cached keys are trusted for their TTL "
                                    f"({self.local.ttl_seconds:g} s)")
            finally:
                with contextlib.suppress(*UNREACHABLE):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(retry_seconds)


class RedisReplicas:
    """`ReplicaBoard` in Redis: one key per replica holding its last report as JSON, expiring
    `ttl_seconds` after it was posted, so a replica that is gone drops off by itself."""

    def __init__(self, client: Redis, prefix: str, ttl_seconds: float) -> None:
        self._client = client
        self._prefix = f"{prefix}replica:"
        self.ttl_ms = max(1, math.ceil(ttl_seconds * 1000))

    async def publish(self, report: Report) -> None:
        await self._client.set(self._prefix + report["node_id"], json.dumps(report),
                               px=self.ttl_ms)

    async def withdraw(self, node_id: str) -> None:
        await self._client.delete(self._prefix + node_id)

    async def reports(self) -> list[Report]:
        try:
            names = [name async for name in
                     self._client.scan_iter(match=_glob_escape(self._prefix) + "*", count=500)]
            values = await self._client.mget(names) if names else []
        except UNREACHABLE:
            raise LimitsUnavailable("The replicas' reports cannot be read: the shared limits "
                                    "store (Redis) is unreachable.") from None
        return [json.loads(value) for value in values if value is not None]


def _glob_escape(text: str) -> str:
    """`text` matched literally by Redis' glob patterns (SCAN MATCH)."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)
