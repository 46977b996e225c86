"""`/v1/account`, `/v1/account/usage` and `/v1/account/usage/summary`: a key's own account and
usage, never another account's; filters; summaries that add up to the rows, with days at the
client's UTC offset, on SQLite and PostgreSQL. In-process servers with keys on and the fake
provider (account_helpers.py)."""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import pytest_asyncio
from account_helpers import (
    CONFIG,
    UNIT,
    account,
    bearer,
    error,
    generate,
    get,
    insert_usage,
    key,
)

from imagegate.accounts.admin import USAGE_COLUMNS

KEY_FIELDS = {"id", "name", "prefix", "is_admin", "enabled", "expires_at", "allowed_models",
              "allowed_ips", "rpm_limit", "concurrency_limit", "price_multiplier", "visible_mark",
              "created_at"}
ACCOUNT_FIELDS = {"id", "name", "currency", "balance_micros", "held_micros", "spent_micros",
                  "unlimited", "price_multiplier", "label_producer", "visible_mark", "created_at"}


@pytest_asyncio.fixture(loop_scope="module")
async def srv(shared_inprocess):
    """One app for the module's tests: each makes the accounts and keys it looks at."""
    return await shared_inprocess(CONFIG)


def _sums(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {"requests": len(rows), "images": sum(r["images_delivered"] for r in rows),
            "cost_micros": sum(r["cost_micros"] for r in rows),
            "failed": sum(1 for r in rows if r["status"] >= 400)}


# --------------------------------------------------------------------------------------------
# who the key is


async def test_a_user_key_sees_its_own_account_and_key(srv) -> None:
    owner = await account(srv, 5 * UNIT, price_multiplier="1.5")
    made = await key(srv, owner, rpm_limit=60, allowed_models=["fake-image"])
    assert (await generate(srv, made["key"])).status_code == 200
    for path in ("/v1/account", "/account"):
        response = await get(srv, made["key"], path)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["object"] == "account" and body["is_admin"] is False
        assert set(body["account"]) == ACCOUNT_FIELDS
        admin_view = (await srv.client.get(f"/admin/accounts/{owner['id']}",
                                           headers=srv.auth())).json()
        assert body["account"] == admin_view
        assert body["account"]["spent_micros"] == 15_000  # 0.01 x 1.5
        assert set(body["key"]) == KEY_FIELDS
        assert body["key"]["id"] == made["id"] and body["key"]["prefix"] == made["prefix"]
        assert body["key"]["is_admin"] is False and body["key"]["rpm_limit"] == 60
        assert body["key"]["allowed_models"] == ["fake-image"]
        assert made["key"] not in response.text  # the prefix only


async def test_an_admin_key_is_admin(srv) -> None:
    body = (await srv.client.get("/v1/account", headers=srv.auth())).json()
    assert body["is_admin"] is True and body["key"]["is_admin"] is True
    assert body["account"]["name"] == "admin"


async def test_without_a_valid_key_it_is_401(srv) -> None:
    for path in ("/v1/account", "/v1/account/usage", "/v1/account/usage/summary"):
        error(await srv.client.get(path), 401, code="invalid_api_key")
        error(await get(srv, "sk-ig-no-such-key-0123456789", path), 401,
              code="invalid_api_key")


async def test_with_auth_off_there_is_no_key(inprocess) -> None:
    srv = await inprocess(CONFIG, auth="off")
    body = (await srv.client.get("/v1/account")).json()
    assert body["key"] is None and body["is_admin"] is True
    assert body["account"]["name"] == "local" and body["account"]["unlimited"] is True


# --------------------------------------------------------------------------------------------
# usage: own rows only


async def test_usage_holds_only_the_callers_account_rows(srv) -> None:
    alice, bob = await account(srv, 100 * UNIT), await account(srv, 100 * UNIT)
    alice_keys = [await key(srv, alice), await key(srv, alice)]
    bob_key = await key(srv, bob)
    assert (await generate(srv, alice_keys[0]["key"], n=2)).status_code == 200
    assert (await generate(srv, alice_keys[1]["key"])).status_code == 200
    assert (await generate(srv, alice_keys[0]["key"], "fail")).status_code == 500
    assert (await generate(srv, bob_key["key"])).status_code == 200

    rows = (await get(srv, alice_keys[1]["key"], "/v1/account/usage")).json()
    assert rows["object"] == "list" and len(rows["data"]) == 3
    assert {r["account_id"] for r in rows["data"]} == {alice["id"]}
    assert set(rows["data"][0]) == set(USAGE_COLUMNS)
    assert [r["images_delivered"] for r in rows["data"]] == [2, 1, 0]  # oldest first
    theirs = (await get(srv, bob_key["key"], "/v1/account/usage")).json()["data"]
    assert [r["account_id"] for r in theirs] == [bob["id"]]
    # Another account's key id matches nothing; the account's own keys filter.
    assert (await get(srv, alice_keys[0]["key"], "/v1/account/usage",
                      key=bob_key["id"])).json()["data"] == []
    mine = (await get(srv, alice_keys[1]["key"], "/v1/account/usage",
                      key=alice_keys[0]["id"])).json()["data"]
    assert [r["key_id"] for r in mine] == [alice_keys[0]["id"]] * 2

    response = await get(srv, alice_keys[0]["key"], "/v1/account/usage", format="csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == \
        'attachment; filename="imagegate-usage.csv"'
    table = list(csv.DictReader(io.StringIO(response.text)))
    assert list(table[0]) == list(USAGE_COLUMNS)
    assert [r["request_id"] for r in table] == [r["request_id"] for r in rows["data"]]
    # The admin's listing has them all.
    everyone = (await srv.client.get("/admin/usage", headers=srv.auth())).json()["data"]
    assert {r["account_id"] for r in everyone} >= {alice["id"], bob["id"]}


async def test_usage_filters(srv) -> None:
    owner = await account(srv, 100 * UNIT)
    made = await key(srv, owner)
    day = datetime(2026, 3, 1, tzinfo=timezone.utc)
    ids = [await insert_usage(srv, owner, day + timedelta(hours=h), key_id=made["id"],
                              model=model, status=status)
           for h, model, status in ((1, "fake-image", 200), (2, "fake-other", 200),
                                    (3, "fake-image", 402), (4, "fake-image", 200),
                                    (30, "fake-image", 200))]

    async def listed(**params: Any) -> list[str]:
        response = await get(srv, made["key"], "/v1/account/usage", **params)
        assert response.status_code == 200, response.text
        return [r["request_id"] for r in response.json()["data"]]

    assert await listed() == ids
    assert await listed(model="fake-other") == [ids[1]]
    assert await listed(status="failed") == [ids[2]]
    assert await listed(status="402") == [ids[2]]
    assert await listed(status="succeeded") == [ids[0], ids[1], ids[3], ids[4]]
    assert await listed(since="2026-03-01T02:00:00Z", until="2026-03-01T04:00:00Z") == \
        ids[1:3]  # until is exclusive
    assert await listed(since="2026-03-01T03:00:00+01:00") == ids[1:]  # 02:00 UTC onwards
    assert await listed(limit=2) == ids[3:]  # the newest two, oldest first
    assert await listed(model="fake-image", status="succeeded", limit=2) == [ids[3], ids[4]]


@pytest.mark.parametrize("params, param", [
    ({"status": "maybe"}, "status"),
    ({"status": "99"}, "status"),
    ({"limit": 0}, "limit"),
    ({"limit": 10_001}, "limit"),
    ({"format": "xml"}, "format"),
    ({"key": 0}, "key"),
    ({"key": 2**31}, "key"),
    ({"since": "yesterday"}, "since"),
    ({"until": "0001-01-01T00:00:00+14:00"}, "until"),
    ({"model": "a\x00b"}, "model"),
    ({"model": "m" * 201}, "model"),
])
async def test_bad_usage_parameters_are_400(srv, params, param) -> None:
    error(await srv.client.get("/v1/account/usage", headers=srv.auth(), params=params),
          400, param)


@pytest.mark.parametrize("params, param", [
    ({"utc_offset_minutes": 841}, "utc_offset_minutes"),
    ({"utc_offset_minutes": -841}, "utc_offset_minutes"),
    ({"utc_offset_minutes": "east"}, "utc_offset_minutes"),
    ({"status": "ok"}, "status"),
])
async def test_bad_summary_parameters_are_400(srv, params, param) -> None:
    error(await srv.client.get("/v1/account/usage/summary", headers=srv.auth(),
                               params=params), 400, param)


# --------------------------------------------------------------------------------------------
# summaries, on both databases


@pytest.fixture
async def db_srv(inprocess, database):
    return await inprocess(CONFIG, **database)


async def test_the_summary_adds_up_the_rows(db_srv) -> None:
    srv = db_srv
    owner, other = await account(srv, 100 * UNIT), await account(srv, 100 * UNIT)
    made, theirs = await key(srv, owner), await key(srv, other)
    for prompt, model, n in (("ok", "fake-image", 3), ("ok", "fake-other", 1),
                             ("partial", "fake-image", 2), ("fail", "fake-image", 1),
                             ("ok", "fake-other", 2)):
        await generate(srv, made["key"], prompt, model=model, n=n)
    await generate(srv, theirs["key"], n=4)  # another account's: in neither

    rows = (await get(srv, made["key"], "/v1/account/usage")).json()["data"]
    summary = (await get(srv, made["key"], "/v1/account/usage/summary")).json()
    assert summary["object"] == "usage_summary" and summary["currency"] == "USD"
    assert summary["total"] == _sums(rows) == {
        "requests": 5, "images": 3 + 1 + 1 + 0 + 2, "failed": 1,
        "cost_micros": 3 * UNIT + 2 * UNIT + UNIT + 0 + 4 * UNIT}
    assert "by_account" not in summary
    today = rows[-1]["created_at"][:10]
    assert summary["by_day"] == [{"date": today, **{k: v for k, v in _sums(rows).items()
                                                    if k != "failed"}}]
    by_model = {m: _sums([r for r in rows if r["model"] == m]) for m in ("fake-image",
                                                                       "fake-other")}
    assert summary["by_model"] == [  # cost descending
        {"model": "fake-other", "requests": 2, "images": 3, "cost_micros": 6 * UNIT},
        {"model": "fake-image", "requests": 3, "images": 4, "cost_micros": 4 * UNIT}]
    assert by_model["fake-image"]["cost_micros"] == 4 * UNIT
    # Filters apply to the summary as to the rows.
    failed = (await get(srv, made["key"], "/v1/account/usage/summary",
                        status="failed")).json()
    assert failed["total"] == {"requests": 1, "images": 0, "cost_micros": 0, "failed": 1}
    only = (await get(srv, made["key"], "/v1/account/usage/summary",
                      model="fake-other")).json()
    assert only["total"]["cost_micros"] == 6 * UNIT and len(only["by_model"]) == 1


async def test_the_utc_offset_moves_days(db_srv) -> None:
    srv = db_srv
    owner = await account(srv)
    made = await key(srv, owner)
    late = datetime(2026, 3, 1, 23, 30, tzinfo=timezone.utc)
    noon = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
    await insert_usage(srv, owner, late, cost_micros=7)
    await insert_usage(srv, owner, noon, cost_micros=5, images=2)
    await insert_usage(srv, owner, datetime(2026, 3, 4, 0, 10, tzinfo=timezone.utc),
                       cost_micros=1)

    async def days(offset: int, **params: Any) -> list[tuple[str, int, int, int]]:
        response = await get(srv, made["key"], "/v1/account/usage/summary",
                             utc_offset_minutes=offset, **params)
        assert response.status_code == 200, response.text
        return [(d["date"], d["requests"], d["images"], d["cost_micros"])
                for d in response.json()["by_day"]]

    assert await days(0) == [("2026-03-01", 2, 3, 12), ("2026-03-04", 1, 1, 1)]
    assert await days(60) == [("2026-03-01", 1, 2, 5), ("2026-03-02", 1, 1, 7),
                              ("2026-03-04", 1, 1, 1)]
    assert await days(-780) == [("2026-02-28", 1, 2, 5), ("2026-03-01", 1, 1, 7),
                                ("2026-03-03", 1, 1, 1)]
    assert await days(840) == [("2026-03-02", 2, 3, 12), ("2026-03-04", 1, 1, 1)]
    # A local day as since/until: UTC+1's 2 March is 23:00 UTC on the 1st up to 23:00 on the 2nd.
    assert await days(60, since="2026-03-02T00:00:00+01:00",
                      until="2026-03-03T00:00:00+01:00") == [("2026-03-02", 1, 1, 7)]


async def test_many_rows_are_added_up_by_the_database(db_srv) -> None:
    """More rows than any listing's default limit: the summary still counts every one."""
    srv = db_srv
    owner = await account(srv)
    made = await key(srv, owner)
    engine = srv.app.state.service.accounts.engine
    from sqlalchemy import insert

    from imagegate.accounts.tables import UsageRecord

    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = [{"created_at": start + timedelta(hours=i), "request_id": f"req_bulk_{i}",
             "key_id": made["id"], "account_id": owner["id"], "endpoint": "images.generations",
             "model": f"m{i % 3}", "n": 1, "images_delivered": 1, "cost_micros": i,
             "status": 200 if i % 10 else 500, "latency_ms": 1} for i in range(1500)]
    async with engine.begin() as conn:
        await conn.execute(insert(UsageRecord), rows)
    summary = (await get(srv, made["key"], "/v1/account/usage/summary")).json()
    assert summary["total"] == {"requests": 1500, "images": 1500,
                                "cost_micros": sum(range(1500)), "failed": 150}
    assert len(summary["by_day"]) == 63  # 1500 hours
    assert sum(d["requests"] for d in summary["by_day"]) == 1500
    assert Counter(m["model"] for m in summary["by_model"]) == {"m0": 1, "m1": 1, "m2": 1}
    assert [m["model"] for m in summary["by_model"]] == ["m2", "m1", "m0"]  # cost descending
    listed = (await get(srv, made["key"], "/v1/account/usage")).json()["data"]
    assert len(listed) == 1000  # the default limit: the newest 1000
    assert listed[-1]["request_id"] == "req_bulk_1499"


async def test_an_account_summary_is_in_its_currency(srv) -> None:
    owner = await account(srv)
    made = await key(srv, owner)
    summary = (await srv.client.get("/v1/account/usage/summary",
                                    headers=bearer(made["key"]))).json()
    assert summary["currency"] == owner["currency"]
    assert summary["total"] == {"requests": 0, "images": 0, "cost_micros": 0, "failed": 0}
    assert summary["by_day"] == [] and summary["by_model"] == []
