"""Limits and the key cache shared through Redis (limits/redis.py), and the replicas' board.

Two in-process apps on one database and one Redis (its own key prefix per test) stand in for
two gateway replicas. The Redis-down cases run against a `redis-server` this module starts on a
free port and kills. Everything is skipped without IMAGEGATE_TEST_REDIS_URL (and `redis-server`
for the cases that kill one). Eventual effects are polled for, with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import InProcess, StartInProcess, free_port
from fake_providers import calls
from holding_upstream import holding_upstream

pytest.importorskip("redis")

from imagegate.accounts.keys import Caller, KeyRecord  # noqa: E402
from imagegate.limits.base import LimitsUnavailable  # noqa: E402
from imagegate.limits.redis import (  # noqa: E402
    RedisKeyCache,
    RedisLimits,
    connect,
)

FAKE = """
[providers]
fake = "fake_providers:FakeProvider"

[models.fake-image]
backend = "fake"
"""


async def eventually(check: Callable[[], Awaitable[bool]], what: str,
                     timeout: float = 15.0) -> float:
    """Poll `check` until it holds; the seconds that took. Fails after `timeout`."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


class OwnRedis:
    """A `redis-server` of this test's own on a free loopback port, to kill and start again."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.tmp = tmp
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True,
                             text=True).stdout.strip() != "PONG":
            assert self.process.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not answer"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server is not installed")
    server = OwnRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill()


# --- the counts, directly --------------------------------------------------------------------


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[Callable[[], Any]]:
    """`new()`: a client of `redis_url` (closed after the test)."""
    made: list[Any] = []

    def new() -> Any:
        made.append(connect(redis_url, 5.0))
        return made[-1]

    yield new
    for client in made:
        await client.aclose()


async def test_a_slot_whose_holder_died_frees_when_its_lease_ends(
        clients: Callable[[], Any], redis_prefix: str) -> None:
    dead = RedisLimits(clients(), redis_prefix, lease_seconds=1)
    alive = RedisLimits(clients(), redis_prefix, lease_seconds=1)
    assert await dead.take_slot(5, 1)
    assert not await alive.take_slot(5, 1)  # held by the other "replica"
    assert await alive.active(5) == 1
    # The holder never renews nor gives it back (killed): the lease ends, the slot is free.
    await eventually(lambda: alive.take_slot(5, 1), "the dead holder's slot freed")
    assert await alive.active(5) == 1 and alive.held(5) == 1
    await alive.give_slot(5)
    assert await alive.active(5) == 0


async def test_a_renewed_slot_outlives_its_first_lease(clients: Callable[[], Any],
                                                        redis_prefix: str) -> None:
    now = [1_700_000_000.0]
    holder = RedisLimits(clients(), redis_prefix, lease_seconds=10, clock=lambda: now[0])
    other = RedisLimits(clients(), redis_prefix, lease_seconds=10, clock=lambda: now[0])
    assert await holder.take_slot(9, 1)
    now[0] += 8
    await holder.renew()  # the lease now ends at 18
    now[0] += 7
    assert not await other.take_slot(9, 1)  # 15: past the first lease, still held
    now[0] += 3.5
    assert await other.take_slot(9, 1)  # 18.5: not renewed again, so gone
    await holder.give_slot(9)  # gone already: giving it back is harmless
    assert await other.active(9) == 1


async def test_with_redis_down_keys_with_limits_fail_closed(own_redis: OwnRedis) -> None:
    client = connect(own_redis.url, 1.0)
    try:
        counts = RedisLimits(client, "down:", lease_seconds=5)
        assert await counts.hit(1, 10) is None
        assert await counts.take_slot(1, 2)
        own_redis.kill()
        for call in (counts.hit(1, 10), counts.take_slot(1, 2)):
            with pytest.raises(LimitsUnavailable) as info:
                await call
            assert (info.value.status, info.value.code) == (503, "limits_unavailable")
            assert info.value.headers == {"retry-after": "5"}
        await counts.give_slot(1)  # never raises: the lease frees it
        assert counts.held(1) == 0
    finally:
        await client.aclose()


# --- the key cache ---------------------------------------------------------------------------


def _record(key_id: int) -> KeyRecord:
    return KeyRecord(Caller(key_id=key_id, account_id=1), f"hash-{key_id}", True, None, None)


def _cached(cache: RedisKeyCache[KeyRecord], digest: str) -> bool:
    try:
        cache.get(digest)
    except KeyError:
        return False
    return True


class Listening:
    """Key caches on one Redis with their listeners running; stopped at the end."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.tasks: list[asyncio.Task[None]] = []
        self.clients: list[Any] = []

    async def cache(self, ttl: float = 3600) -> RedisKeyCache[KeyRecord]:
        client, listener = connect(self.url, 1.0), connect(self.url, 1.0, retries=0)
        self.clients += [client, listener]
        cache: RedisKeyCache[KeyRecord] = RedisKeyCache(client, listener, self.prefix, ttl)
        self.tasks.append(asyncio.create_task(cache.listen_forever(retry_seconds=0.1)))
        await asyncio.wait_for(cache.listening.wait(), 30)
        return cache

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for client in self.clients:
            await client.aclose()


async def test_forget_on_one_replica_reaches_the_other(redis_url: str,
                                                       redis_prefix: str) -> None:
    caches = Listening(redis_url, redis_prefix)
    try:
        here, there = await caches.cache(), await caches.cache()
        for cache in (here, there):
            cache.put("one", _record(1))
            cache.put("two", _record(2))
            cache.put("nobody", None)
        await here.forget(1)
        assert not _cached(here, "one")  # at once where it was asked

        async def gone_there() -> bool:
            return not _cached(there, "one")

        await eventually(gone_there, "key 1 forgotten by the other cache", timeout=1.0)
        assert _cached(there, "two") and _cached(there, "nobody")

        await here.forget_all()

        async def all_gone_there() -> bool:
            return len(there) == 0

        await eventually(all_gone_there, "every key forgotten by the other cache", timeout=1.0)
    finally:
        await caches.close()


async def test_a_cache_that_lost_redis_keeps_its_ttl_then_starts_afresh(
        own_redis: OwnRedis, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "imagegate.limits.redis")
    caches = Listening(own_redis.url, "cache:")
    try:
        cache = await caches.cache()
        cache.put("one", _record(1))
        own_redis.kill()

        async def deaf() -> bool:
            return not cache.listening.is_set()

        await eventually(deaf, "the listener notices Redis is gone")
        assert _cached(cache, "one")  # trusted for its TTL meanwhile
        await cache.forget(1)  # publishing fails, logged; this replica forgets anyway
        assert not _cached(cache, "one")
        cache.put("two", _record(2))

        # Retried every 0.1 s, and a publish failed too: one warning for the whole outage.
        assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
            "Redis unreachable for the API-key cache's invalidations"]

        own_redis.start()  # invalidations published meanwhile were missed: start afresh
        await asyncio.wait_for(cache.listening.wait(), 30)
        assert not _cached(cache, "two")
        assert caplog.records[-1].getMessage() == (
            "Redis reachable again for the API-key cache's invalidations")
    finally:
        await caches.close()


# --- two replicas ----------------------------------------------------------------------------


async def _two(inprocess: StartInProcess, tmp_path: Path, redis_url: str, redis_prefix: str,
               config: str = FAKE, **settings: Any) -> tuple[InProcess, InProcess]:
    shared = {"database_url": f"sqlite:///{tmp_path / 'shared.db'}", "redis_url": redis_url,
              "redis_prefix": redis_prefix, **settings}
    first = await inprocess(config=config, node_id="replica-a", **shared)
    second = await inprocess(config=config, node_id="replica-b", **shared)
    return first, second


async def _key(srv: InProcess, **limits: Any) -> tuple[int, str]:
    """A key (with `limits`) of an unlimited account; its id and the key."""
    name = f"acct-{time.monotonic_ns()}"
    response = await srv.client.post("/admin/accounts", headers=srv.auth(),
                                     json={"name": name, "unlimited": True})
    assert response.status_code == 201, response.text
    response = await srv.client.post("/admin/keys", headers=srv.auth(),
                                     json={"account": name, "name": "k", **limits})
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["key"]


async def _generate(srv: InProcess, key: str, prompt: str = "a cat") -> Any:
    return await srv.client.post("/v1/images/generations",
                                 headers={"Authorization": f"Bearer {key}"},
                                 json={"model": "fake-image", "prompt": prompt,
                                       "response_format": "b64_json"})


async def test_rpm_limit_holds_across_replicas(inprocess: StartInProcess, tmp_path: Path,
                                               redis_url: str, redis_prefix: str) -> None:
    first, second = await _two(inprocess, tmp_path, redis_url, redis_prefix)
    _, key = await _key(first, rpm_limit=4)
    answers = await asyncio.gather(*(_generate(srv, key, f"cat {i}")
                                     for i in range(5) for srv in (first, second)))
    statuses = sorted(response.status_code for response in answers)
    assert statuses == [200] * 4 + [429] * 6
    for response in answers:
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "rate_limit_exceeded"
            assert 1 <= int(response.headers["retry-after"]) <= 61


async def test_concurrency_limit_holds_across_replicas(
        inprocess: StartInProcess, tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    first, second = await _two(inprocess, tmp_path, redis_url, redis_prefix)
    _, key = await _key(first, concurrency_limit=1)
    running = asyncio.ensure_future(_generate(first, key, "gate:open held"))

    async def started() -> bool:
        return bool(calls(first.data_dir, "gate:open held"))

    await eventually(started, "the first request running on replica a")
    refused = await _generate(second, key)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "concurrency_limit_exceeded"
    (first.data_dir / "open").touch()
    assert (await running).status_code == 200
    assert (await _generate(second, key)).status_code == 200  # given back on its end


async def test_a_key_disabled_on_one_replica_is_refused_by_the_other_within_a_second(
        inprocess: StartInProcess, tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    # Keys trusted for an hour: only the invalidation can make the other replica see it.
    first, second = await _two(inprocess, tmp_path, redis_url, redis_prefix,
                               auth_cache_seconds=3600)
    key_id, key = await _key(first)
    assert (await _generate(second, key)).status_code == 200  # cached on the second now

    async def refused_there(reason: str) -> bool:
        response = await _generate(second, key)
        return response.status_code == 401 and reason in response.json()["error"]["message"]

    async def accepted_there() -> bool:
        return (await _generate(second, key)).status_code == 200

    response = await first.client.post(f"/admin/keys/{key_id}/disable", headers=first.auth())
    assert response.status_code == 200, response.text
    await eventually(lambda: refused_there("disabled"), "disabled on replica b", timeout=1.0)
    response = await first.client.post(f"/admin/keys/{key_id}/enable", headers=first.auth())
    assert response.status_code == 200, response.text
    await eventually(accepted_there, "enabled again on replica b", timeout=1.0)
    response = await first.client.delete(f"/admin/keys/{key_id}", headers=first.auth())
    assert response.status_code == 200, response.text
    await eventually(lambda: refused_there("Incorrect"), "deleted on replica b", timeout=1.0)


async def test_a_key_disabled_by_the_cli_is_refused_at_once_by_servers_sharing_redis(
        inprocess: StartInProcess, tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    from typer.testing import CliRunner

    from imagegate.cli import app

    database = tmp_path / "shared.db"
    srv = await inprocess(config=FAKE, database_url=f"sqlite:///{database}",
                          redis_url=redis_url, redis_prefix=redis_prefix,
                          auth_cache_seconds=3600)  # only the invalidation can make it see
    key_id, key = await _key(srv)
    assert (await _generate(srv, key)).status_code == 200  # the key is cached now
    env: dict[str, str | None] = {name: None for name in os.environ
                                  if name.startswith("IMAGEGATE_")}
    env.update(IMAGEGATE_DATABASE_URL=f"sqlite:///{database}", IMAGEGATE_REDIS_URL=redis_url,
               IMAGEGATE_REDIS_PREFIX=redis_prefix, IMAGEGATE_DATA_DIR=str(tmp_path / "cli"))
    result = await asyncio.to_thread(CliRunner().invoke, app, ["keys", "disable", str(key_id)],
                                     env=env)
    assert result.exit_code == 0, result.output
    assert "running servers sharing Redis were told at once" in result.stderr

    async def refused() -> bool:
        return (await _generate(srv, key)).status_code == 401

    await eventually(refused, "the CLI's disable seen by the server", timeout=1.0)


async def test_admin_replicas_lists_every_replicas_counts(
        inprocess: StartInProcess, tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    with holding_upstream() as (upstream, config):
        first, second = await _two(inprocess, tmp_path, redis_url, redis_prefix,
                                   config=config, limits_report_interval_seconds=0.1,
                                   upstream_max_in_flight=7)
        held = asyncio.ensure_future(second.client.post(
            "/v1/images/generations", headers=second.auth(),
            json={"model": "relayed", "prompt": "a lighthouse", "size": "1024x1024",
                  "response_format": "b64_json"}))
        await upstream.until_held(1)

        async def listed() -> dict[str, Any]:
            response = await first.client.get("/admin/replicas", headers=first.auth())
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["object"] == "list"
            return {report["node_id"]: report for report in body["data"]}

        async def second_holds_one() -> bool:
            reports = await listed()
            relay = reports.get("replica-b", {}).get("relay", {})
            return relay.get("relayed", {}).get("in_flight") == 1

        await eventually(second_holds_one, "replica b's relayed request listed by replica a")
        reports = await listed()
        assert sorted(reports) == ["replica-a", "replica-b"]
        assert reports["replica-a"]["relay"]["relayed"] == {"in_flight": 0, "max": 7,
                                                             "rejected": 0}
        assert reports["replica-b"]["relay"]["relayed"]["max"] == 7
        for report in reports.values():
            assert report["engine"] == {}  # no local model was used
            assert isinstance(report["reported_at"], float)
        upstream.release()
        assert (await held).status_code == 200

        # A user key may not look.
        _, user = await _key(first)
        response = await first.client.get("/admin/replicas",
                                          headers={"Authorization": f"Bearer {user}"})
        assert response.status_code == 403


async def test_with_redis_killed_keys_with_limits_get_503_and_the_rest_keep_working(
        inprocess: StartInProcess, tmp_path: Path, own_redis: OwnRedis) -> None:
    srv = await inprocess(config=FAKE, redis_url=own_redis.url, redis_timeout_seconds=0.5)
    limited_id, limited = await _key(srv, rpm_limit=100, concurrency_limit=2)
    _, plain = await _key(srv)
    assert (await _generate(srv, limited)).status_code == 200
    own_redis.kill()

    refused = await _generate(srv, limited)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "limits_unavailable"
    assert refused.headers["retry-after"] == "5"
    assert (await _generate(srv, plain)).status_code == 200  # a key without limits
    assert (await _generate(srv, limited)).status_code == 503  # every time, not just once

    # Admin changes still work here (other replicas see them when their cache expires).
    response = await srv.client.post(f"/admin/keys/{limited_id}/disable", headers=srv.auth())
    assert response.status_code == 200, response.text
    assert (await _generate(srv, limited)).status_code == 401
    response = await srv.client.get("/admin/replicas", headers=srv.auth())
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "limits_unavailable"

    own_redis.start()  # back: limits are counted again

    async def admitted() -> bool:
        response = await srv.client.post(f"/admin/keys/{limited_id}/enable",
                                         headers=srv.auth())
        assert response.status_code == 200
        return (await _generate(srv, limited)).status_code == 200

    await eventually(admitted, "the limited key admitted once Redis is back")
