"""Two real `imagegate serve` processes on one PostgreSQL, one Redis and one S3 bucket (moto's
server on loopback), with the same `url_secret` and their own `node_id`s.

- a key's `rpm_limit` counts across both; an image made through one is served by the other; a
  key disabled through one is refused by the other within a second; 200 concurrent requests
  against a balance for 50 images get exactly 50;
- `kill -9` of one during 20 running requests: the other keeps serving, and once the dead one's
  reservations are released (its advisory lock is gone, or its lease ran out) nothing is held
  and every account's balance plus spent is its top-ups.

Skipped without PostgreSQL or Redis (IMAGEGATE_TEST_DATABASE_URL, IMAGEGATE_TEST_REDIS_URL).
The burst needs about 85 free connections on the PostgreSQL server (each gateway's pool
opens up to 40, plus its lock's); a server out of them answers the gateways' new connections
"too many clients", and those requests get 500s.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
import s3_server as s3_fixtures
from conftest import PostgresDatabases, ServerFactory
from gateway import Gateway, wait_for
from s3_server import CREDENTIALS, REGION, S3Server

pytest.importorskip("redis")

s3_server = s3_fixtures.s3_server  # the session's moto server, a fixture of this module too

UNIT = 10_000  # micros per fake-image
CONFIG = """
[providers]
fake = "fake_providers:FakeProvider"

[models.fake-image]
backend = "fake"
[models.fake-image.pricing]
per_image = "0.01"
"""
STEADY_TOPUP = 100_000 * UNIT  # far more than the survivor's steady requests spend
SECRET = "two-gateways-shared-url-secret-0123456789"


@dataclass
class Pair:
    a: Gateway
    b: Gateway

    def close(self) -> None:
        for gateway in (self.a, self.b):
            gateway.close()
            gateway.server.process.terminate()
        for gateway in (self.a, self.b):
            try:
                gateway.server.process.wait(30)
            except Exception:
                gateway.server.process.kill()


StartPair = Callable[..., Pair]


@pytest.fixture(scope="module")
def shared_backends(postgres_databases: PostgresDatabases, redis_url: str,
                    s3_server: S3Server) -> Iterator[StartPair]:
    """Start two gateways on a fresh database, a Redis prefix and a bucket of their own:
    `start(**settings)` gives a Pair; each is stopped, and what it used removed, at the end."""
    import redis

    made: list[tuple[Pair, str, str]] = []

    def start(start_server: ServerFactory, **settings: str) -> Pair:
        database = postgres_databases.take()
        prefix = f"imagegate-test-{uuid.uuid4().hex[:12]}:"
        bucket = f"imagegate-{uuid.uuid4().hex[:16]}"
        s3_server.client().create_bucket(Bucket=bucket)
        admin_dsn = postgres_databases.admin_dsn.rpartition("/")[0]
        shared = {"database_url": f"{admin_dsn}/{database}", "redis_url": redis_url,
                  "redis_prefix": prefix, "url_secret": SECRET, "storage_backend": "s3",
                  "s3_bucket": bucket, "s3_endpoint_url": s3_server.endpoint,
                  "s3_region": REGION, "s3_prefix": "gw", "ledger_sweep_seconds": "1",
                  "reservation_lease_seconds": "10", **settings}
        with pytest.MonkeyPatch.context() as env:  # the servers inherit the credentials
            for name, value in CREDENTIALS.items():
                env.setenv(name, value)
            # one after the other: the first migrates the new database
            a = Gateway.start(start_server, CONFIG, node_id="gateway-a", **shared)
            b = Gateway.start(start_server, CONFIG, node_id="gateway-b", **shared)
        pair = Pair(a, b)
        made.append((pair, database, prefix))
        return pair

    yield start
    client = redis.Redis.from_url(redis_url)
    try:
        for pair, database, prefix in made:
            pair.close()
            postgres_databases.drop(database)
            names = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if names:
                client.delete(*names)
    finally:
        client.close()


@pytest.fixture(scope="module")
def pair(shared_backends: StartPair, start_server: ServerFactory) -> Pair:
    """Two gateways shared by the tests that leave both running."""
    return shared_backends(start_server, auth_cache_seconds="60")


def _error_code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


def test_rpm_limit_counts_across_both_replicas(pair: Pair) -> None:
    pair.a.create_account("rpm", unlimited=True)
    key = pair.a.create_key("rpm", rpm_limit=10)
    answers = [(pair.a if i % 2 == 0 else pair.b).generate(key, f"rpm {i}") for i in range(16)]
    statuses = [r.status_code for r in answers]
    assert statuses.count(200) == 10, statuses
    refused = [r for r in answers if r.status_code != 200]
    assert all(r.status_code == 429 and _error_code(r) == "rate_limit_exceeded"
               for r in refused), [r.text for r in refused]
    assert all("retry-after" in r.headers for r in refused)


def test_an_image_made_through_one_is_served_by_the_other(pair: Pair) -> None:
    key = pair.a.funded_key("links", 10 * UNIT)
    made = pair.a.generate(key, "a link", response_format="url")
    assert made.status_code == 200, made.text
    url = made.json()["data"][0]["url"]
    path = url[url.index("/", len("http://")):]  # path and signed query, whatever the host
    here = httpx.get(pair.a.base_url + path)
    there = httpx.get(pair.b.base_url + path)
    assert here.status_code == there.status_code == 200, there.text
    assert there.content == here.content and there.content.startswith(b"\x89PNG")
    assert there.headers["content-type"] == here.headers["content-type"]


def test_a_key_disabled_through_one_is_refused_by_the_other_within_a_second(pair: Pair) -> None:
    pair.a.create_account("disabled", unlimited=True)
    created = pair.a.admin.post("/admin/keys", json={"account": "disabled", "name": "test"})
    assert created.status_code == 201, created.text
    key, key_id = created.json()["key"], created.json()["id"]
    # Both replicas have verified the key, so both hold it in their key cache (60 s here):
    # without the invalidation over Redis, B would go on accepting it for a minute.
    for gateway in (pair.a, pair.b):
        assert gateway.generate(key, "cached").status_code == 200
    disabled = pair.a.admin.post(f"/admin/keys/{key_id}/disable")
    assert disabled.status_code == 200, disabled.text
    since = time.monotonic()
    while True:
        answer = pair.b.generate(key, "after")
        if answer.status_code != 200:
            took = time.monotonic() - since
            break
        assert time.monotonic() - since < 5, "the other replica still accepts the key after 5 s"
        time.sleep(0.02)
    assert answer.status_code == 401 and _error_code(answer) == "invalid_api_key", answer.text
    assert took <= 1.0, f"refused by the other replica only after {took:.2f} s"
    assert pair.a.generate(key, "after").status_code == 401


def test_200_concurrent_requests_against_a_balance_for_50_get_exactly_50(pair: Pair) -> None:
    key = pair.a.funded_key("fifty", 50 * UNIT)

    async def burst() -> list[httpx.Response | BaseException]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=240, limits=limits,
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            return await asyncio.gather(*(client.post(
                (pair.a if i % 2 == 0 else pair.b).base_url + "/v1/images/generations",
                json={"model": "fake-image", "prompt": f"burst {i}"}) for i in range(200)),
                return_exceptions=True)

    answers = asyncio.run(burst())
    responses = [a for a in answers if isinstance(a, httpx.Response)]
    assert len(responses) == len(answers), [repr(a) for a in answers if a not in responses]
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 50, sorted(statuses)
    refused = [r for r in responses if r.status_code != 200]
    assert all(r.status_code == 402 and r.json()["error"]["type"] == "insufficient_quota"
               and _error_code(r) == "insufficient_balance" for r in refused), \
        {r.status_code: r.text for r in refused}
    for gateway in (pair.a, pair.b):  # both read the one database
        account = gateway.account("fifty")
        assert (account["balance_micros"], account["held_micros"],
                account["spent_micros"]) == (0, 0, 50 * UNIT), account


def test_kill_9_of_one_during_20_requests(shared_backends: StartPair,
                                          start_server: ServerFactory) -> None:
    crash = shared_backends(start_server)
    doomed, survivor = crash.a, crash.b
    doomed_key = doomed.funded_key("doomed", 20 * UNIT)
    steady_key = survivor.funded_key("steady", STEADY_TOPUP)

    def hang(i: int) -> None:
        try:  # the fake provider's `hang`: running until the process dies under it
            doomed.generate(doomed_key, f"hang {i}", timeout=300)
        except httpx.HTTPError:
            pass

    hung = [threading.Thread(target=hang, args=(i,), daemon=True) for i in range(20)]
    for thread in hung:
        thread.start()
    wait_for(lambda: survivor.account("doomed")["held_micros"] == 20 * UNIT,
             "20 requests running on the first replica", 120, interval=0.1)

    # The survivor serves all along: before, while and after the first one dies.
    served: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def steady() -> None:
        i = 0
        while not stop.is_set():
            answer = survivor.generate(steady_key, f"steady {i}", timeout=60)
            served.append((time.monotonic(), answer.status_code, answer.text[:300]))
            i += 1

    steadily = threading.Thread(target=steady, daemon=True)
    steadily.start()
    wait_for(lambda: len(served) >= 3, "the survivor to answer before the kill", 60)
    doomed.server.process.send_signal(signal.SIGKILL)
    doomed.server.process.wait(30)
    killed_at = time.monotonic()
    for thread in hung:
        thread.join(60)

    def released() -> bool:
        account = survivor.account("doomed")
        return bool(account["held_micros"] == 0)

    wait_for(released, "the dead replica's reservations to be released", 90, interval=0.2)
    released_at = time.monotonic()
    wait_for(lambda: sum(t > released_at for t, _, _ in served) >= 3,
             "the survivor to answer after the release", 60)
    stop.set()
    steadily.join(90)

    failed = [(status, text) for _, status, text in served if status != 200]
    assert not failed, failed
    assert any(t > killed_at for t, _, _ in served)
    doomed_account = survivor.account("doomed")
    assert (doomed_account["balance_micros"], doomed_account["held_micros"],
            doomed_account["spent_micros"]) == (20 * UNIT, 0, 0), doomed_account
    steady_account = survivor.account("steady")
    assert steady_account["held_micros"] == 0
    assert steady_account["spent_micros"] == len(served) * UNIT
    assert steady_account["balance_micros"] + steady_account["spent_micros"] == STEADY_TOPUP
