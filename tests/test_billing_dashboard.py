"""The one-api / new-api billing endpoints chat front ends call with the user's key:
`/v1/dashboard/billing/subscription` (what the account may still spend, in currency units) and
`/v1/dashboard/billing/usage` (what it was charged in a period, in cents), both also without
`/v1`. In-process servers with keys on and the fake provider (account_helpers.py)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
import pytest_asyncio
from account_helpers import CONFIG, UNIT, account, error, generate, get, insert_usage, key
from fake_providers import calls

SUBSCRIPTION = ("/v1/dashboard/billing/subscription", "/dashboard/billing/subscription")
USAGE = ("/v1/dashboard/billing/usage", "/dashboard/billing/usage")


@pytest_asyncio.fixture(loop_scope="module")
async def srv(shared_inprocess):
    """One app for the module's tests: each makes the accounts and keys it looks at."""
    return await shared_inprocess(CONFIG)


async def _subscription(srv, api_key: str, path: str = SUBSCRIPTION[0]) -> dict:
    response = await get(srv, api_key, path)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_the_limits_are_what_the_account_may_still_spend(srv) -> None:
    owner = await account(srv, 12_500_000)  # 12.50
    made = await key(srv, owner)
    for path in SUBSCRIPTION:
        body = await _subscription(srv, made["key"], path)
        assert body == {"object": "billing_subscription", "has_payment_method": True,
                        "soft_limit_usd": 12.5, "hard_limit_usd": 12.5,
                        "system_hard_limit_usd": 12.5, "access_until": 0}
    assert (await generate(srv, made["key"], n=3)).status_code == 200
    assert (await _subscription(srv, made["key"]))["hard_limit_usd"] == pytest.approx(12.47)


async def test_what_a_running_request_holds_is_not_available(inprocess) -> None:
    srv = await inprocess(CONFIG)  # its own: it counts the provider's calls
    owner = await account(srv, 10 * UNIT)
    made = await key(srv, owner)
    running = asyncio.ensure_future(generate(srv, made["key"], "gate:open-billing", n=4))
    while not calls(srv.data_dir):  # the request holds its price once the provider has it
        await asyncio.sleep(0.02)
    held = (await srv.client.get(f"/admin/accounts/{owner['id']}", headers=srv.auth())).json()
    assert held["held_micros"] == 4 * UNIT
    body = await _subscription(srv, made["key"])
    # balance minus held: the balance has already let go of what is held
    assert body["hard_limit_usd"] == pytest.approx((10 * UNIT - 4 * UNIT) / 1_000_000)
    assert body["hard_limit_usd"] == held["balance_micros"] / 1_000_000
    (srv.data_dir / "open-billing").touch()
    assert (await running).status_code == 200
    assert (await _subscription(srv, made["key"]))["hard_limit_usd"] == \
        pytest.approx(6 * UNIT / 1_000_000)


async def test_an_unlimited_account_shows_one_apis_unlimited_figure(srv) -> None:
    owner = await account(srv, unlimited=True)
    made = await key(srv, owner)
    assert (await generate(srv, made["key"])).status_code == 200  # balance below 0 now
    body = await _subscription(srv, made["key"])
    assert body["soft_limit_usd"] == body["hard_limit_usd"] == 100_000_000


async def test_a_balance_below_zero_shows_zero(srv) -> None:
    owner = await account(srv, UNIT)
    response = await srv.client.post(f"/admin/accounts/{owner['id']}/topup",
                                     headers=srv.auth(), json={"amount": "-5"})
    assert response.status_code == 200 and response.json()["balance_micros"] < 0
    made = await key(srv, owner)
    assert (await _subscription(srv, made["key"]))["hard_limit_usd"] == 0


async def test_access_until_is_the_keys_expiry(srv) -> None:
    owner = await account(srv, UNIT)
    expires = (datetime.now(timezone.utc) + timedelta(days=30)).replace(microsecond=0)
    made = await key(srv, owner, expires_at=expires.isoformat())
    assert (await _subscription(srv, made["key"]))["access_until"] == int(expires.timestamp())


async def test_usage_is_the_charged_cost_in_cents_for_a_date_range(srv) -> None:
    owner, other = await account(srv, UNIT), await account(srv)
    made = await key(srv, owner)
    for day, cost in ((1, 123_456), (2, 10_000), (3, 5), (2, 0)):
        await insert_usage(srv, owner, datetime(2026, 3, day, 12, tzinfo=timezone.utc),
                           cost_micros=cost)
    await insert_usage(srv, owner, datetime(2026, 3, 2, 23, 59, 59, tzinfo=timezone.utc),
                       cost_micros=1_000_000)
    await insert_usage(srv, other, datetime(2026, 3, 2, 12, tzinfo=timezone.utc),
                       cost_micros=999_999)  # another account's: never counted

    async def total(path: str = USAGE[0], **dates: str) -> float:
        response = await get(srv, made["key"], path, **dates)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"object", "total_usage"} and body["object"] == "list"
        return float(body["total_usage"])

    for path in USAGE:
        # end_date is exclusive; cents are micros / 10,000
        assert await total(path, start_date="2026-03-01", end_date="2026-03-03") == \
            pytest.approx((123_456 + 10_000 + 1_000_000) / 10_000)
    assert await total(start_date="2026-03-02", end_date="2026-03-03") == pytest.approx(101)
    assert await total(start_date="2026-03-03") == pytest.approx(0.0005)
    assert await total(end_date="2026-03-02") == pytest.approx(12.3456)
    assert await total(start_date="2026-04-01", end_date="2026-03-01") == 0
    assert await total() == pytest.approx(113.3461)
    # A request made now counts too: 0.01 = 1 cent.
    assert (await generate(srv, made["key"])).status_code == 200
    assert await total() == pytest.approx(114.3461)


@pytest.mark.parametrize("dates, param", [
    ({"start_date": "2026-02-30"}, "start_date"),
    ({"end_date": "2026-1-1"}, "end_date"),
    ({"start_date": "yesterday"}, "start_date"),
    ({"end_date": "2026-03-01T00:00:00Z"}, "end_date"),
    ({"start_date": "0000-01-01"}, "start_date"),
])
async def test_a_bad_date_is_400(srv, dates, param) -> None:
    for path in USAGE:
        error(await srv.client.get(path, headers=srv.auth(), params=dates), 400, param)


async def test_without_a_valid_key_it_is_401(srv) -> None:
    for path in SUBSCRIPTION + USAGE:
        error(await srv.client.get(path), 401, code="invalid_api_key")
        error(await get(srv, "sk-ig-not-a-real-key-000000000", path), 401,
              code="invalid_api_key")
