"""The admin routes the console uses besides the basic ones: account and key edits that apply to
the very next request (the key cache forgets), usage summaries across accounts, every catalog
model with its deployments' health and engine queue, the server's status without a secret; and
the aspect-ratio presets `/v1/models` derives from each model's size rule. In-process servers
with keys on (account_helpers.py); summaries on SQLite and PostgreSQL."""

from __future__ import annotations

import re
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
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from upstream_server import serve_app

from imagegate.aspect_ratios import AT_1K
from imagegate.catalog import Catalog
from imagegate.model_info import size_presets

NEW_ADMIN_ROUTES = [
    ("PATCH", "/admin/accounts/{account}", {"unlimited": True}),
    ("GET", "/admin/keys/{key}", None),
    ("PATCH", "/admin/keys/{key}", {"rpm_limit": 1}),
    ("GET", "/admin/usage/summary", None),
    ("GET", "/admin/models", None),
    ("GET", "/admin/status", None),
]


@pytest_asyncio.fixture(loop_scope="module")
async def srv(shared_inprocess):
    """One app for the module's tests: each makes the accounts and keys it looks at."""
    return await shared_inprocess(CONFIG)


async def _patch(srv, path: str, body: Any) -> dict[str, Any]:
    response = await srv.client.patch(path, headers=srv.auth(), json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _cost_of_next_request(srv, api_key: str, **body: Any) -> int:
    response = await generate(srv, api_key, **body)
    assert response.status_code == 200, response.text
    rows = (await get(srv, api_key, "/v1/account/usage", limit=1)).json()["data"]
    return int(rows[0]["cost_micros"])


# --------------------------------------------------------------------------------------------
# who may call them


async def test_user_keys_get_403_and_no_key_401_on_every_new_admin_route(srv) -> None:
    owner = await account(srv, UNIT)
    user = await key(srv, owner)
    before = (await srv.client.get(f"/admin/keys/{user['id']}", headers=srv.auth())).json()
    for method, path, body in NEW_ADMIN_ROUTES:
        path = path.replace("{account}", str(owner["id"])).replace("{key}", str(user["id"]))
        response = await srv.client.request(method, path, json=body, headers=bearer(user["key"]))
        error(response, 403, code="admin_only")
        error(await srv.client.request(method, path, json=body), 401, code="invalid_api_key")
    assert (await srv.client.get(f"/admin/keys/{user['id']}", headers=srv.auth())).json() == \
        before
    assert (await srv.client.get(f"/admin/accounts/{owner['id']}",
                                 headers=srv.auth())).json()["unlimited"] is False


# --------------------------------------------------------------------------------------------
# account edits


async def test_an_account_multiplier_applies_to_the_next_request_at_once(srv) -> None:
    owner = await account(srv, 100 * UNIT)
    made = await key(srv, owner)
    assert await _cost_of_next_request(srv, made["key"]) == UNIT  # the key is cached now
    changed = await _patch(srv, f"/admin/accounts/{owner['id']}", {"price_multiplier": "2.5"})
    assert changed["price_multiplier"] == "2.5"
    assert changed == (await srv.client.get(f"/admin/accounts/{owner['name']}",
                                            headers=srv.auth())).json()
    assert await _cost_of_next_request(srv, made["key"]) == 25_000
    # A key's own multiplier still wins over the account's.
    await _patch(srv, f"/admin/keys/{made['id']}", {"price_multiplier": "0.5"})
    assert await _cost_of_next_request(srv, made["key"]) == 5_000
    await _patch(srv, f"/admin/keys/{made['id']}", {"price_multiplier": None})
    assert await _cost_of_next_request(srv, made["key"]) == 25_000


async def test_unlimited_applies_to_the_next_request_at_once(srv) -> None:
    owner = await account(srv)
    made = await key(srv, owner)
    error(await generate(srv, made["key"]), 402, code="insufficient_balance")
    changed = await _patch(srv, f"/admin/accounts/{owner['name']}", {"unlimited": True})
    assert changed["unlimited"] is True and changed["price_multiplier"] == "1"
    assert (await generate(srv, made["key"])).status_code == 200
    await _patch(srv, f"/admin/accounts/{owner['id']}", {"unlimited": False})
    error(await generate(srv, made["key"]), 402, code="insufficient_balance")


@pytest.mark.parametrize("body, param", [
    ({}, None),
    ({"price_multiplier": "cheap"}, "price_multiplier"),
    ({"price_multiplier": "-1"}, "price_multiplier"),
    ({"price_multiplier": "1001"}, "price_multiplier"),
    ({"price_multiplier": 2}, "price_multiplier"),
    ({"price_multiplier": None}, "price_multiplier"),
    ({"unlimited": "yes"}, "unlimited"),
    ({"unlimited": None}, "unlimited"),
    ({"name": "renamed"}, "name"),
    ({"balance_micros": 10**9}, "balance_micros"),
])
async def test_bad_account_edits_are_400(srv, body, param) -> None:
    owner = await account(srv)
    error(await srv.client.patch(f"/admin/accounts/{owner['id']}", headers=srv.auth(),
                                 json=body), 400, param)
    assert (await srv.client.get(f"/admin/accounts/{owner['id']}",
                                 headers=srv.auth())).json() == owner


async def test_an_unknown_account_is_404(srv) -> None:
    for ref in ("no-such-account", "999999", "9" * 30):
        error(await srv.client.patch(f"/admin/accounts/{ref}", headers=srv.auth(),
                                     json={"unlimited": True}), 404)


# --------------------------------------------------------------------------------------------
# key edits


async def test_key_edits_apply_at_once_and_null_clears(srv) -> None:
    owner = await account(srv, 100 * UNIT)
    expires = (datetime.now(timezone.utc) + timedelta(days=7)).replace(microsecond=0)
    made = await key(srv, owner, expires_at=expires.isoformat(), rpm_limit=100)
    assert (await generate(srv, made["key"])).status_code == 200  # cached from here on

    changed = await _patch(srv, f"/admin/keys/{made['id']}", {"allowed_models": ["fake-other"]})
    assert changed["allowed_models"] == ["fake-other"] and changed["rpm_limit"] == 100
    error(await generate(srv, made["key"]), 403, "model", "model_not_allowed")
    assert (await generate(srv, made["key"], model="fake-other")).status_code == 200

    changed = await _patch(srv, f"/admin/keys/{made['id']}",
                           {"allowed_models": None, "rpm_limit": 1, "name": "renamed"})
    assert changed["allowed_models"] is None and changed["name"] == "renamed"
    assert (await generate(srv, made["key"])).status_code == 200
    error(await generate(srv, made["key"]), 429, code="rate_limit_exceeded")
    changed = await _patch(srv, f"/admin/keys/{made['id']}", {"rpm_limit": None})
    assert changed["rpm_limit"] is None
    assert (await generate(srv, made["key"])).status_code == 200

    assert changed["expires_at"] is not None
    changed = await _patch(srv, f"/admin/keys/{made['id']}", {"expires_at": None})
    assert changed["expires_at"] is None
    past = (datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat()
    await _patch(srv, f"/admin/keys/{made['id']}", {"expires_at": past})
    error(await generate(srv, made["key"]), 401, code="invalid_api_key")
    await _patch(srv, f"/admin/keys/{made['id']}", {"expires_at": None})

    await _patch(srv, f"/admin/keys/{made['id']}", {"allowed_ips": ["203.0.113.0/24"]})
    error(await generate(srv, made["key"]), 403, code="ip_not_allowed")
    await _patch(srv, f"/admin/keys/{made['id']}", {"allowed_ips": None})
    assert (await generate(srv, made["key"])).status_code == 200

    # GET /admin/keys/{id} is the key as GET /admin/keys lists it.
    one = (await srv.client.get(f"/admin/keys/{made['id']}", headers=srv.auth())).json()
    listed = (await srv.client.get("/admin/keys", headers=srv.auth(),
                                   params={"account": owner["id"]})).json()["data"]
    assert [one] == listed
    assert "key" not in one and one["prefix"] == made["prefix"]


async def test_fields_left_out_are_kept(srv) -> None:
    owner = await account(srv)
    made = await key(srv, owner, allowed_models=["fake-image"], allowed_ips=["127.0.0.1"],
                     rpm_limit=7, concurrency_limit=3, price_multiplier="2")
    changed = await _patch(srv, f"/admin/keys/{made['id']}", {"concurrency_limit": 4})
    expected = {k: v for k, v in made.items() if k != "key"}
    assert changed == {**expected, "concurrency_limit": 4}


@pytest.mark.parametrize("body, param", [
    ({}, None),
    ({"name": None}, "name"),
    ({"name": ""}, "name"),
    ({"rpm_limit": 0}, "rpm_limit"),
    ({"rpm_limit": "5"}, "rpm_limit"),
    ({"concurrency_limit": 10**7}, "concurrency_limit"),
    ({"allowed_ips": ["not-an-address"]}, "allowed_ips"),
    ({"allowed_models": "fake-image"}, "allowed_models"),
    ({"price_multiplier": "free"}, "price_multiplier"),
    ({"expires_at": 1700000000}, "expires_at"),
    ({"is_admin": True}, "is_admin"),
    ({"enabled": False}, "enabled"),
    ({"account": 1}, "account"),
])
async def test_bad_key_edits_are_400(srv, body, param) -> None:
    owner = await account(srv)
    made = await key(srv, owner)
    before = (await srv.client.get(f"/admin/keys/{made['id']}", headers=srv.auth())).json()
    error(await srv.client.patch(f"/admin/keys/{made['id']}", headers=srv.auth(), json=body),
          400, param)
    assert (await srv.client.get(f"/admin/keys/{made['id']}", headers=srv.auth())).json() == \
        before


async def test_an_unknown_key_is_404(srv) -> None:
    for key_id in (999_999, 2**31, 2**63):
        error(await srv.client.patch(f"/admin/keys/{key_id}", headers=srv.auth(),
                                     json={"rpm_limit": 5}), 404)
        error(await srv.client.get(f"/admin/keys/{key_id}", headers=srv.auth()), 404)


async def test_the_last_admin_key_cannot_be_expired(srv) -> None:
    mine = (await srv.client.get("/v1/account", headers=srv.auth())).json()["key"]
    past = (datetime.now(timezone.utc) - timedelta(seconds=1)).isoformat()
    error(await srv.client.patch(f"/admin/keys/{mine['id']}", headers=srv.auth(),
                                 json={"expires_at": past}), 409, "key", "last_admin_key")
    soon = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    assert (await _patch(srv, f"/admin/keys/{mine['id']}", {"expires_at": soon}))["expires_at"]
    await _patch(srv, f"/admin/keys/{mine['id']}", {"expires_at": None})


# --------------------------------------------------------------------------------------------
# usage across accounts


@pytest.fixture
async def db_srv(inprocess, database):
    return await inprocess(CONFIG, **database)


async def test_the_admin_summary_covers_every_account(db_srv) -> None:
    srv = db_srv
    alice, bob = await account(srv), await account(srv)
    alice_key = await key(srv, alice)
    day = datetime(2026, 5, 10, 23, 30, tzinfo=timezone.utc)
    await insert_usage(srv, alice, day, key_id=alice_key["id"], cost_micros=300, images=3)
    await insert_usage(srv, alice, day + timedelta(hours=2), key_id=alice_key["id"],
                       model="fake-other", status=500)
    await insert_usage(srv, bob, day, cost_micros=1000, images=1)
    params = {"since": "2026-05-01T00:00:00Z", "until": "2026-06-01T00:00:00Z"}

    async def summary(**more: Any) -> dict[str, Any]:
        response = await srv.client.get("/admin/usage/summary", headers=srv.auth(),
                                        params={**params, **more})
        assert response.status_code == 200, response.text
        return dict(response.json())

    everyone = await summary()
    assert everyone["object"] == "usage_summary" and everyone["currency"] == "USD"
    assert everyone["total"] == {"requests": 3, "images": 4, "cost_micros": 1300, "failed": 1}
    assert everyone["by_account"] == [
        {"account_id": bob["id"], "account": bob["name"], "requests": 1, "images": 1,
         "cost_micros": 1000},
        {"account_id": alice["id"], "account": alice["name"], "requests": 2, "images": 3,
         "cost_micros": 300}]
    assert everyone["by_day"] == [
        {"date": "2026-05-10", "requests": 2, "images": 4, "cost_micros": 1300},
        {"date": "2026-05-11", "requests": 1, "images": 0, "cost_micros": 0}]
    assert (await summary(utc_offset_minutes=60))["by_day"] == [
        {"date": "2026-05-11", "requests": 3, "images": 4, "cost_micros": 1300}]
    assert [m["model"] for m in everyone["by_model"]] == ["fake-image", "fake-other"]
    by_name = await summary(account=alice["name"])
    assert by_name == await summary(account=str(alice["id"]))
    assert by_name["total"]["requests"] == 2
    assert [a["account_id"] for a in by_name["by_account"]] == [alice["id"]]
    assert (await summary(key=alice_key["id"], status="failed"))["total"]["requests"] == 1
    assert (await summary(model="fake-other"))["total"]["failed"] == 1
    error(await srv.client.get("/admin/usage/summary", headers=srv.auth(),
                               params={"account": "nobody-here"}), 404)

    # /admin/usage takes `until` and `status` too.
    rows = (await srv.client.get("/admin/usage", headers=srv.auth(), params={
        **params, "status": "failed"})).json()["data"]
    assert [r["status"] for r in rows] == [500]
    rows = (await srv.client.get("/admin/usage", headers=srv.auth(), params={
        "since": params["since"], "until": (day + timedelta(hours=1)).isoformat()})).json()
    assert sorted(r["account_id"] for r in rows["data"]) == sorted([alice["id"], bob["id"]])


# --------------------------------------------------------------------------------------------
# models


def _cooling_upstream() -> Starlette:
    """An OpenAI-style upstream that is always out of capacity for ten minutes."""
    async def images(request: Request) -> JSONResponse:
        return JSONResponse({"error": {"message": "busy", "type": "rate_limit_error",
                                       "param": None, "code": None}},
                            status_code=429, headers={"retry-after": "600"})

    return Starlette(routes=[Route("/v1/images/generations", images, methods=["POST"])])


async def test_admin_models_lists_every_model_with_its_health(inprocess) -> None:
    with serve_app(_cooling_upstream()) as upstream:
        srv = await inprocess(CONFIG + f"""
[models.relayed]
backend = "upstream"
[[models.relayed.deployments]]
provider = "openai_images"
base_url = "{upstream}/v1"
name = "busy-one"
weight = 3
priority = 1
""")
        listed = await srv.client.get("/admin/models", headers=srv.auth())
        assert listed.status_code == 200, listed.text
        models = {m["id"]: m for m in listed.json()["data"]}
        # disabled library entries are there, and say so
        assert models["dall-e-3"]["enabled"] is False
        assert models["dall-e-3"]["deployments"] == [] and models["dall-e-3"]["engine"] is None
        assert models["fake-image"]["enabled"] is True
        assert models["fake-image"]["available"] is True
        served = {m["id"] for m in (await srv.client.get(
            "/v1/models", headers=srv.auth())).json()["data"]}
        assert served < set(models)
        assert {m["id"] for m in models.values() if m["enabled"]} == served
        # a local model: the engine's numbers (no job yet: nothing queued or run)
        tiny = models["tiny-sd"]
        assert tiny["backend"] == "local" and tiny["weights"] == "present"
        assert tiny["engine"]["queued"] == 0 and tiny["engine"]["running"] == 0
        assert tiny["engine"]["jobs_done"] == 0
        # an upstream model: its deployment, healthy
        relayed = models["relayed"]
        assert relayed["deployments"] == [
            {"name": "busy-one", "format": "openai_images", "weight": 3, "priority": 1,
             "cooling_down": False, "cooling_down_seconds": 0.0}]
        assert relayed["engine"] is None and relayed["in_flight"]["running"] == 0

        failed = await srv.client.post("/v1/images/generations", headers=srv.auth(),
                                       json={"model": "relayed", "prompt": "a cat"})
        assert failed.status_code >= 400

        models = {m["id"]: m for m in (await srv.client.get(
            "/admin/models", headers=srv.auth())).json()["data"]}
        (deployment,) = models["relayed"]["deployments"]
        assert deployment["cooling_down"] is True
        assert 500 < deployment["cooling_down_seconds"] <= 600


async def test_admin_models_shows_the_engine_after_a_job(inprocess) -> None:
    srv = await inprocess()
    response = await srv.client.post("/v1/images/generations", headers=srv.auth(), json={
        "model": "tiny-sd", "prompt": "a boat", "size": "64x64", "quality": "low"})
    assert response.status_code == 200, response.text
    models = {m["id"]: m for m in (await srv.client.get(
        "/admin/models", headers=srv.auth())).json()["data"]}
    engine = models["tiny-sd"]["engine"]
    assert engine["jobs_done"] == 1 and engine["loaded"] is True and engine["loads"] == 1
    assert engine["queued"] == 0 and engine["running"] == 0
    assert models["tiny-sd"]["loaded"] is True


# --------------------------------------------------------------------------------------------
# status


async def test_status_says_how_the_server_runs(srv) -> None:
    response = await srv.client.get("/admin/status", headers=srv.auth())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "status"
    assert body["database"] == {"backend": "sqlite", "reachable": True}
    assert body["storage"] == {"backend": "local"}
    assert body["engine"] == {"backend": "process"}
    assert body["limits"] == {"backend": "process"}
    assert body["readiness"] == {"status": "ready"}
    assert isinstance(body["pid"], int) and isinstance(body["version"], str)
    assert body["started_at"] == srv.app.state.started_at
    assert body["uptime_seconds"] >= 0
    assert [r["node_id"] for r in body["replicas"]] == [body["node_id"]]


async def test_status_holds_no_secret(inprocess, pg_url) -> None:
    # The test server trusts local connections, so a password in the URL is accepted unused.
    with_password = re.sub(r"^postgresql://([^@/:]+)(:[^@]*)?@",
                           r"postgresql://\1:s3cret-pw-4711@", pg_url)
    assert "s3cret-pw-4711" in with_password
    srv = await inprocess(CONFIG, database_url=with_password)
    response = await srv.client.get("/admin/status", headers=srv.auth())
    assert response.status_code == 200, response.text
    assert response.json()["database"] == {"backend": "postgresql", "reachable": True}
    for secret in ("s3cret-pw-4711", srv.admin_key, srv.admin_key[:16], "postgresql://"):
        assert secret not in response.text


# --------------------------------------------------------------------------------------------
# size presets


def test_size_presets_follow_the_models_rule() -> None:
    catalog = Catalog.from_config({"coarse": {
        "backend": "upstream", "capabilities": {
            "default_size": "512x512",
            "size_rule": {"multiple_of": 64, "min_edge": 256, "max_edge": 768}}}})
    presets = size_presets(catalog.lookup("coarse"))
    assert presets["1:1"] == "512x512"
    assert set(presets) <= set(AT_1K) and list(presets) == [r for r in AT_1K if r in presets]
    sizes = [tuple(map(int, s.split("x"))) for s in presets.values()]
    assert len(set(sizes)) == len(sizes)  # a size that repeats is listed once
    for width, height in sizes:
        assert width % 64 == 0 and height % 64 == 0
        assert 256 <= width <= 768 and 256 <= height <= 768
    assert presets["16:9"] == "704x384"  # 677x387 at 512x512's area, snapped to 64s
    assert len(presets) < len(AT_1K)  # at 64-pixel steps some ratios meet

    flux = size_presets(catalog.lookup("flux-schnell"))
    assert list(flux) == list(AT_1K)
    assert flux["1:1"] == "1024x1024"
    assert flux["16:9"] == "1360x768"  # 1344x768 at 1024x1024's area (1355x774), in 16s
    assert size_presets(catalog.lookup("dall-e-3")) == {}  # fixed sizes: none


async def test_v1_models_shows_size_presets(srv) -> None:
    cards = {c["id"]: c for c in (await srv.client.get(
        "/v1/models", headers=srv.auth())).json()["data"]}
    tiny = cards["tiny-sd"]["imagegate"]["capabilities"]
    assert tiny["size_presets"]["1:1"] == "512x512"
    for size in tiny["size_presets"].values():
        width, height = map(int, size.split("x"))
        assert width % 8 == 0 and height % 8 == 0
        assert abs(width * height - 512 * 512) / (512 * 512) < 0.1
    table = await srv.client.get("/v1/models/fake-image", headers=srv.auth())
    assert "size_presets" in table.json()["imagegate"]["capabilities"]
    response = await srv.client.get("/admin/models", headers=srv.auth())
    fixed = {m["id"]: m for m in response.json()["data"]}["gpt-image-1"]
    assert "size_presets" not in fixed["capabilities"]
