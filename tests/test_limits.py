"""Per-key limits: `KeyLimits` (accounts/limits.py), the policy, over `Limits` (limits/), the
counts.

The counting contract runs over every backend: in this process, and in Redis (skipped without
IMAGEGATE_TEST_REDIS_URL). Time is the test's: `time.time` is a clock the test moves (the Redis
backend is given it instead of the Redis server's clock).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from imagegate.accounts.keys import Caller
from imagegate.accounts.limits import KeyLimits, RateLimited
from imagegate.limits.base import WINDOW_SECONDS, Limits
from imagegate.limits.process import ProcessLimits

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    return clock


@pytest.fixture(params=["process", "redis"])
async def counts(request: pytest.FixtureRequest) -> AsyncIterator[Limits]:
    if request.param == "process":
        yield ProcessLimits()
        return
    from imagegate.limits.redis import RedisLimits, connect

    client = connect(request.getfixturevalue("redis_url"), 5.0)
    try:
        yield RedisLimits(client, request.getfixturevalue("redis_prefix"),
                          clock=lambda: time.time())  # the test's clock, read at each call
    finally:
        await client.aclose()


def _caller(key_id: int | None = 7, rpm: int | None = None,
            concurrency: int | None = None) -> Caller:
    return Caller(key_id=key_id, account_id=1, rpm_limit=rpm, concurrency_limit=concurrency)


async def _admit(limits: KeyLimits, caller: Caller) -> None:
    async with limits.slot(caller):
        pass


async def _refused(limits: KeyLimits, caller: Caller) -> RateLimited:
    with pytest.raises(RateLimited) as info:
        await _admit(limits, caller)
    assert (info.value.status, info.value.type) == (429, "rate_limit_error")
    return info.value


# --- the counting contract -------------------------------------------------------------------


async def test_contract_a_moving_window(counts: Limits, clock: Clock) -> None:
    for offset in (0, 10, 20):
        clock.now = T0 + offset
        assert await counts.hit(1, 3) is None
    clock.now = T0 + 30
    assert await counts.hit(1, 3) == pytest.approx(30)  # until the request at 0 leaves
    assert await counts.hit(1, 3) == pytest.approx(30)  # a refusal is not counted
    assert await counts.hit(2, 3) is None  # each key has its own window
    clock.now = T0 + WINDOW_SECONDS + 0.5
    assert await counts.hit(1, 3) is None  # the first left; 10, 20 and this one remain
    assert await counts.hit(1, 3) == pytest.approx(9.5)  # until the request at 10 leaves


async def test_contract_concurrency_slots(counts: Limits) -> None:
    assert await counts.take_slot(1, 2) and await counts.take_slot(1, 2)
    assert not await counts.take_slot(1, 2)
    assert await counts.take_slot(2, 2)  # each key has its own
    await counts.give_slot(1)
    assert await counts.take_slot(1, 2)
    assert not await counts.take_slot(1, 2)


# --- the policy ------------------------------------------------------------------------------


async def test_n_per_minute_then_429_with_retry_after(clock: Clock) -> None:
    limits = KeyLimits(ProcessLimits())
    caller = _caller(rpm=3)
    for _ in range(3):
        await _admit(limits, caller)
        clock.now += 5
    refused = await _refused(limits, caller)
    assert refused.code == "rate_limit_exceeded"
    # the first request leaves the window in 45 s: at 45 s it is at its very edge, still in
    assert refused.headers == {"retry-after": str(WINDOW_SECONDS - 15 + 1)}
    assert "3 requests per minute" in refused.message
    await _admit(limits, _caller(key_id=8, rpm=3))  # another key is not held back
    clock.now += WINDOW_SECONDS - 15
    await _refused(limits, caller)
    clock.now += 1
    await _admit(limits, caller)  # a client that waited Retry-After is admitted


async def test_retry_after_rounds_up_to_whole_seconds(clock: Clock) -> None:
    limits = KeyLimits(ProcessLimits())
    caller = _caller(rpm=1)
    await _admit(limits, caller)
    clock.now += 20.3
    assert (await _refused(limits, caller)).headers == {"retry-after": "40"}


async def test_retry_after_is_at_least_one_second(clock: Clock) -> None:
    limits = KeyLimits(ProcessLimits())
    caller = _caller(rpm=1)
    await _admit(limits, caller)
    clock.now += WINDOW_SECONDS - 0.2
    assert (await _refused(limits, caller)).headers == {"retry-after": "1"}


async def test_concurrency_slots_are_held_for_the_request_and_given_back() -> None:
    counts = ProcessLimits()
    limits = KeyLimits(counts)
    caller = _caller(concurrency=2)
    async with limits.slot(caller), limits.slot(caller):
        assert counts.active(7) == 2
        refused = await _refused(limits, caller)
        assert (refused.code, refused.headers) == ("concurrency_limit_exceeded",
                                                   {"retry-after": "1"})
        assert counts.active(7) == 2  # a refusal holds nothing
    assert counts.active(7) == 0
    with pytest.raises(ValueError):
        async with limits.slot(caller):
            raise ValueError("a request that fails gives its slot back too")
    assert counts.active(7) == 0
    assert counts._active == {}  # keys with nothing running are not kept


async def test_a_request_refused_by_rate_takes_no_slot(clock: Clock) -> None:
    counts = ProcessLimits()
    limits = KeyLimits(counts)
    caller = _caller(rpm=1, concurrency=5)
    async with limits.slot(caller):
        await _refused(limits, caller)
        assert counts.active(7) == 1


async def test_requests_without_a_key_or_limits_are_not_counted() -> None:
    class Refusing:
        async def hit(self, key_id: int, limit: int) -> float | None:
            raise AssertionError("counted")

        async def take_slot(self, key_id: int, limit: int) -> bool:
            raise AssertionError("counted")

        async def give_slot(self, key_id: int) -> None:
            raise AssertionError("counted")

    limits = KeyLimits(Refusing())
    await _admit(limits, _caller(key_id=None, rpm=1, concurrency=1))  # IMAGEGATE_AUTH=off
    await _admit(limits, _caller())  # a key with no limits
