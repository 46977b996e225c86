"""Money through real servers: prepaid balances, reservations, settlement, idempotency, prices.

Every test starts `imagegate serve` processes (conftest.py) with API keys on, serving models of
the fake provider (fake_providers.py; what a request does is chosen by its prompt), and runs once
on SQLite (the default file in the data dir) and once on PostgreSQL (`pg_url`; skipped without
IMAGEGATE_TEST_DATABASE_URL). Clients are httpx and the official `openai` SDK.

fake-image costs 0.01 = 10_000 micros per image.
"""

from __future__ import annotations

import asyncio
import decimal
import signal
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from fake_providers import calls
from gateway import Gateway, wait_for

UNIT = 10_000  # micros per fake-image

CONFIG = """
[providers]
fake = "fake_providers:FakeProvider"

[models.fake-image]
backend = "fake"
[models.fake-image.capabilities]
max_n = 4
[models.fake-image.pricing]
per_image = "0.01"

# dall-e-3-like: a table by size/quality, then a table by size times the quality multiplier,
# then per_image times the size and quality multipliers.
[models.fake-table]
backend = "fake"
[models.fake-table.capabilities]
sizes = ["1024x1024", "1792x1024", "512x512"]
qualities = ["standard", "hd"]
default_quality = "standard"
[models.fake-table.pricing]
per_image = "0.02"
table = { "1024x1024/hd" = "0.08", "1792x1024" = "0.05" }
size_multipliers = { "512x512" = "0.5" }
quality_multipliers = { "hd" = "1.5" }

# priced by pixels: 512x512 is the base
[models.fake-pixels]
backend = "fake"
[models.fake-pixels.pricing]
per_image = "0.01"
base_pixels = 262144

# rounding: 3 micros times 0.5 is 1.5 micros, rounded half up once, at the end
[models.fake-cheap]
backend = "fake"
[models.fake-cheap.pricing]
per_image = "0.000003"

[models.fake-free]
backend = "fake"
"""


# --------------------------------------------------------------------------------------------
# servers and clients


def _kill(gateway: Gateway) -> None:
    """SIGKILL: the server dies as in a crash, its shutdown never runs."""
    gateway.server.process.send_signal(signal.SIGKILL)
    gateway.server.process.wait(10)


def _stop(gateway: Gateway) -> None:
    """Stop a server this test started (if it still runs), so that it holds no port or CPU."""
    gateway.close()
    if gateway.server.process.poll() is None:
        gateway.server.process.terminate()
        try:
            gateway.server.process.wait(10)
        except Exception:
            gateway.server.process.kill()


@pytest.fixture
def open_gateway(start_server: Callable, database: dict[str, str]) -> Iterator[Callable]:
    """Start a server on the parametrized database (stopped when the test ends); pass
    `data_dir=` of an earlier one to start on the same files."""
    opened: list[Gateway] = []

    def open_(**settings: Any) -> Gateway:
        gateway = Gateway.start(start_server, CONFIG, **database, **settings)
        opened.append(gateway)
        return gateway

    yield open_
    for gateway in opened:
        _stop(gateway)


@pytest.fixture
def gateway(open_gateway: Callable) -> Gateway:
    return open_gateway()


def _unique(word: str = "default") -> str:
    return f"{word} {uuid.uuid4().hex}"


def _is_int(value: Any) -> bool:
    return type(value) is int


def _assert_integer_amounts(account: dict) -> None:
    for field in ("balance_micros", "held_micros", "spent_micros"):
        assert _is_int(account[field]), (field, account[field])


def _assert_error(response: httpx.Response, status: int, type_: str, code: str | None) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == type_, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    return error


# --------------------------------------------------------------------------------------------
# 1. concurrency: no micro spent twice


async def test_concurrent_requests_spend_exactly_the_balance(gateway: Gateway) -> None:
    key = gateway.funded_key("racer", 50 * UNIT)  # exactly 50 images' worth
    prompt = _unique()

    limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
    async with httpx.AsyncClient(base_url=gateway.base_url, limits=limits, timeout=240,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        responses = await asyncio.gather(*(
            client.post("/v1/images/generations",
                        json={"model": "fake-image", "prompt": prompt, "n": 1})
            for _ in range(200)))

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 50, 402: 150}, statuses
    for response in responses:
        if response.status_code == 402:
            _assert_error(response, 402, "insufficient_quota", "insufficient_balance")
        else:
            assert len(response.json()["data"]) == 1

    account = gateway.account("racer")
    _assert_integer_amounts(account)
    assert account["balance_micros"] == 0
    assert account["held_micros"] == 0
    assert account["spent_micros"] == 50 * UNIT

    rows = gateway.usage("racer")
    assert len(rows) == 200
    assert Counter(r["status"] for r in rows) == {200: 50, 402: 150}
    assert all(_is_int(r["cost_micros"]) for r in rows)
    assert sum(r["cost_micros"] for r in rows) == 50 * UNIT
    assert account["balance_micros"] == 50 * UNIT - sum(r["cost_micros"] for r in rows)
    assert all(r["cost_micros"] == 0 and r["error_code"] == "insufficient_balance"
               for r in rows if r["status"] == 402)
    # A request refused for money never reached the provider.
    assert len(calls(gateway.data_dir, prompt)) == 50


# --------------------------------------------------------------------------------------------
# 2. failures after the reservation cost nothing


FAILURES = [
    # prompt word, error code
    ("fail", "generation_failed"),   # the provider's own (expected) error
    ("crash", None),                 # a bug in the provider: a generic 500
    ("empty", "generation_failed"),  # the provider answered with no image
]


def test_failure_after_reservation_costs_nothing(gateway: Gateway) -> None:
    key = gateway.funded_key("unlucky", 10 * UNIT)

    for word, code in FAILURES:
        prompt = _unique(word)
        response = gateway.generate(key, prompt, n=2)

        error = _assert_error(response, 500, "server_error", code)
        assert error["param"] is None
        if code is None:  # an unexpected exception: its text must not reach the client
            assert "on purpose" not in error["message"] and "Traceback" not in error["message"]
        assert len(calls(gateway.data_dir, prompt)) == 1  # it did get as far as the provider
        account = gateway.account("unlucky")
        assert (account["balance_micros"], account["held_micros"],
                account["spent_micros"]) == (10 * UNIT, 0, 0), word
        row = gateway.usage_row("unlucky", response.headers["x-request-id"])
        assert row["status"] == 500, (word, row)
        assert row["error_code"] == (code or "internal_error"), (word, row)
        assert (row["cost_micros"], row["images_delivered"], row["n"]) == (0, 0, 2), (word, row)


# --------------------------------------------------------------------------------------------
# 3. charged for exactly what was delivered


def test_partial_result_charges_only_delivered_images(gateway: Gateway) -> None:
    key = gateway.funded_key("partial", 10 * UNIT)

    response = gateway.generate(key, _unique("partial"), n=3)

    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 1
    account = gateway.account("partial")
    assert account["balance_micros"] == 9 * UNIT
    assert account["held_micros"] == 0
    assert account["spent_micros"] == UNIT
    row = gateway.usage_row("partial", response.headers["x-request-id"])
    assert (row["status"], row["n"], row["images_delivered"], row["cost_micros"]) == (
        200, 3, 1, UNIT)

    # A provider that returns n + 1 images: the client asked and paid for n, so it gets n.
    response = gateway.generate(key, _unique("extra"), n=2)

    assert response.status_code == 200, response.text
    account = gateway.account("partial")
    assert account["spent_micros"] == 3 * UNIT  # never more than was reserved
    row = gateway.usage_row("partial", response.headers["x-request-id"])
    assert row["cost_micros"] == 2 * UNIT
    # What was delivered is what was charged.
    assert len(response.json()["data"]) == 2
    assert row["images_delivered"] == 2


def test_client_that_disconnects_is_not_charged(gateway: Gateway) -> None:
    """The client gives up while its images are being made: the work is cancelled, the
    reservation released, and the usage row says the client went away (499)."""
    key = gateway.funded_key("leaver", 10 * UNIT)

    with pytest.raises(httpx.ReadTimeout):
        gateway.generate(key, _unique("slow:3"), n=2, timeout=0.8)

    # The reservation was taken while the request ran, and is given back once it is cancelled.
    wait_for(lambda: any(r["status"] == 499 for r in gateway.usage("leaver")),
             "the usage row of the cancelled request")
    account = gateway.account("leaver")
    assert (account["balance_micros"], account["held_micros"], account["spent_micros"]) == (
        10 * UNIT, 0, 0)
    (row,) = gateway.usage("leaver")
    assert (row["status"], row["error_code"], row["cost_micros"], row["images_delivered"]) == (
        499, "client_disconnected", 0, 0)

    # The same key still works afterwards and is charged normally.
    assert gateway.generate(key, _unique()).status_code == 200
    assert gateway.account("leaver")["spent_micros"] == UNIT


# --------------------------------------------------------------------------------------------
# 4. a server killed mid-request gives its reservations back


def _hang_in_background(gateway: Gateway, key: str, n: int) -> threading.Thread:
    """Send a request that hangs until the server dies; the client's error is expected."""
    def run() -> None:
        try:
            gateway.generate(key, _unique("hang"), n=n, timeout=240)
        except httpx.HTTPError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sigkill_restart_releases_the_reservations_of_every_dead_process(
        open_gateway: Callable) -> None:
    first = open_gateway(node_id="test-node")
    # A second replica on the same database (and data dir) under another name.
    other = open_gateway(node_id="other-node", data_dir=first.data_dir)
    first.create_account("sleeper", topup_micros=5 * UNIT)
    first.create_account("orphan", topup_micros=5 * UNIT)
    sleeper_key = first.create_key("sleeper")
    orphan_key = first.create_key("orphan")

    threads = [_hang_in_background(first, sleeper_key, 2)]
    wait_for(lambda: first.account("sleeper")["held_micros"] == 2 * UNIT,
             "the sleeper's reservation")
    threads.append(_hang_in_background(other, orphan_key, 3))
    wait_for(lambda: first.account("orphan")["held_micros"] == 3 * UNIT,
             "the orphan's reservation")
    assert first.account("sleeper")["balance_micros"] == 3 * UNIT  # held is off the balance
    assert first.account("orphan")["balance_micros"] == 2 * UNIT

    _kill(first)
    _kill(other)
    for thread in threads:
        thread.join(30)

    # test-node comes back on the same files. Both processes are provably gone (their locks
    # died with them), so what either held is released at start-up, before it serves anything;
    # other-node's too, without waiting for its lease (docs/billing.md).
    restarted = open_gateway(node_id="test-node", data_dir=first.data_dir)
    for name in ("sleeper", "orphan"):
        account = restarted.account(name)
        assert (account["balance_micros"], account["held_micros"], account["spent_micros"]) == (
            5 * UNIT, 0, 0), name
    # And the restarted server serves and charges normally.
    assert restarted.generate(sleeper_key, _unique(), n=1).status_code == 200
    assert restarted.account("sleeper")["balance_micros"] == 4 * UNIT


# --------------------------------------------------------------------------------------------
# 5. Idempotency-Key: one generation, one charge, the same answer


async def test_idempotent_retries_generate_and_charge_once(gateway: Gateway) -> None:
    key = gateway.funded_key("idem", 10 * UNIT)
    prompt = _unique("slow:0.5")  # long enough that all five overlap
    body = {"model": "fake-image", "prompt": prompt, "n": 1}
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "retry-me-1"}

    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=240) as client:
        responses = await asyncio.gather(*(
            client.post("/v1/images/generations", json=body, headers=headers)
            for _ in range(5)))

    assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
    answers = [r.json() for r in responses]
    assert all(answer == answers[0] for answer in answers)
    assert len(answers[0]["data"]) == 1 and answers[0]["data"][0]["url"]
    assert len(calls(gateway.data_dir, prompt)) == 1
    account = gateway.account("idem")
    assert (account["balance_micros"], account["held_micros"], account["spent_micros"]) == (
        9 * UNIT, 0, UNIT)
    charged = [r for r in gateway.usage("idem") if r["cost_micros"]]
    assert len(charged) == 1

    # Later retries replay too, and the image link still works.
    late = gateway.generate(key, prompt, n=1, headers={"Idempotency-Key": "retry-me-1"})
    assert late.status_code == 200 and late.json() == answers[0]
    assert httpx.get(answers[0]["data"][0]["url"], timeout=10).status_code == 200

    # Same key, another body: refused, nothing generated or charged.
    changed = _unique()
    other = gateway.generate(key, changed, n=1, headers={"Idempotency-Key": "retry-me-1"})
    error = _assert_error(other, 409, "invalid_request_error", "idempotency_key_reused")
    assert error["param"] == "Idempotency-Key"
    assert calls(gateway.data_dir, changed) == []
    assert gateway.account("idem")["balance_micros"] == 9 * UNIT


def test_idempotency_b64_replays_and_failed_attempts_run_again(gateway: Gateway) -> None:
    key = gateway.funded_key("again", 10 * UNIT)

    # b64_json answers (kept as a file, not in the database) replay identically too.
    prompt = _unique()
    client = gateway.sdk(key)
    answers = [client.images.generate(model="fake-image", prompt=prompt, n=2,
                                      response_format="b64_json",
                                      extra_headers={"Idempotency-Key": "b64-key"})
               for _ in range(3)]
    dumped = [a.model_dump() for a in answers]
    assert dumped[0] == dumped[1] == dumped[2]
    assert len(dumped[0]["data"]) == 2 and all(d["b64_json"] for d in dumped[0]["data"])
    assert len(calls(gateway.data_dir, prompt)) == 1
    assert gateway.account("again")["balance_micros"] == 8 * UNIT

    # A failed attempt is not replayed: the retry runs again (and is not charged either).
    prompt = _unique("fail")
    for attempt in (1, 2):
        response = gateway.generate(key, prompt, headers={"Idempotency-Key": "failing"})
        _assert_error(response, 500, "server_error", "generation_failed")
        assert len(calls(gateway.data_dir, prompt)) == attempt
    assert gateway.account("again")["balance_micros"] == 8 * UNIT

    # Refused for money, topped up, retried with the same key: runs and is charged once.
    gateway.topup("again", amount="-0.05")  # an adjustment down to 3 images' worth
    assert gateway.account("again")["balance_micros"] == 3 * UNIT
    prompt = _unique()
    response = gateway.generate(key, prompt, n=4, headers={"Idempotency-Key": "poor"})
    _assert_error(response, 402, "insufficient_quota", "insufficient_balance")
    gateway.topup("again", amount="0.01")  # 4 images' worth now
    response = gateway.generate(key, prompt, n=4, headers={"Idempotency-Key": "poor"})
    assert response.status_code == 200, response.text
    assert len(calls(gateway.data_dir, prompt)) == 1
    assert gateway.account("again")["balance_micros"] == 0

    # Keys are per account: another account's same key is its own request.
    stranger = gateway.funded_key("stranger", UNIT)
    response = gateway.generate(stranger, prompt, n=1, headers={"Idempotency-Key": "poor"})
    assert response.status_code == 200, response.text
    assert len(calls(gateway.data_dir, prompt)) == 2


# --------------------------------------------------------------------------------------------
# 6. price rules


PRICE_CASES = [
    # model, size, quality, list price in micros
    ("fake-table", "1024x1024", "hd", 80_000),         # table["WxH/quality"]
    ("fake-table", "1024x1024", "standard", 20_000),   # per_image
    ("fake-table", "1792x1024", "hd", 75_000),         # table["WxH"] * quality multiplier
    ("fake-table", "1792x1024", "standard", 50_000),   # table["WxH"]
    ("fake-table", "512x512", "hd", 15_000),           # per_image * size * quality multipliers
    ("fake-table", "512x512", None, 10_000),           # default quality: standard
    ("fake-pixels", "1024x1024", None, 40_000),        # 4 x base_pixels
    ("fake-pixels", "512x768", None, 15_000),          # 1.5 x base_pixels
    ("fake-cheap", "512x512", None, 3),
    ("fake-free", "512x512", None, 0),
]


def test_prices_with_account_and_key_multipliers(gateway: Gateway) -> None:
    budget = 10_000_000
    gateway.create_account("list", topup_micros=budget)
    gateway.create_account("reseller", topup_micros=budget, price_multiplier="0.5")
    keys = {
        ("list", "list price"): (gateway.create_key("list"), 1),
        ("reseller", "account multiplier 0.5"): (gateway.create_key("reseller"), 0.5),
        # A key's own multiplier replaces its account's (it does not multiply with it).
        ("reseller", "key multiplier 2"): (gateway.create_key("reseller", price_multiplier="2"),
                                           2),
    }
    for (account, label), (key, multiplier) in keys.items():
        for model, size, quality, price in PRICE_CASES:
            before = gateway.account(account)["balance_micros"]
            extra = {"quality": quality} if quality else {}
            response = gateway.generate(key, _unique(), model=model, size=size, n=2, **extra)
            assert response.status_code == 200, (label, model, size, response.text)
            unit = int((decimal.Decimal(price) * decimal.Decimal(str(multiplier)))
                       .quantize(decimal.Decimal(1), rounding=decimal.ROUND_HALF_UP))
            case = (label, model, size, quality)
            after = gateway.account(account)
            assert before - after["balance_micros"] == 2 * unit, case
            assert after["held_micros"] == 0, case
            row = gateway.usage_row(account, response.headers["x-request-id"])
            assert row["cost_micros"] == 2 * unit, case
            assert (row["size"], row["model"], row["images_delivered"]) == (size, model, 2)

    # Rounded once, half up: 3 micros x 0.5 = 1.5 -> 2 per image.
    rows = gateway.usage("reseller")
    cheap = [r["cost_micros"] for r in rows if r["model"] == "fake-cheap"]
    assert sorted(cheap) == [4, 12]

    # Amounts are integers everywhere in the admin API.
    listed = gateway.admin.get("/admin/accounts").json()["data"]
    assert {a["name"] for a in listed} >= {"list", "reseller"}
    for account in listed:
        _assert_integer_amounts(account)
    for row in gateway.admin.get("/admin/usage").json()["data"]:
        assert _is_int(row["cost_micros"]) and _is_int(row["images_delivered"]), row
    total = sum(r["cost_micros"] for r in gateway.usage("list"))
    list_account = gateway.account("list")
    assert list_account["spent_micros"] == total
    assert list_account["balance_micros"] == budget - total

    # Top-ups in currency units are exact: no float ever touches money.
    gateway.create_account("exact")
    assert gateway.topup("exact", amount="0.1")["balance_micros"] == 100_000
    assert gateway.topup("exact", amount="0.2")["balance_micros"] == 300_000
    assert gateway.topup("exact", amount_micros=7)["balance_micros"] == 300_007
    assert gateway.topup("exact", amount=1)["balance_micros"] == 1_300_007
    response = gateway.admin.post("/admin/accounts/exact/topup", json={"amount": "lots"})
    _assert_error(response, 400, "invalid_request_error", "invalid_value")
    response = gateway.admin.post("/admin/accounts/exact/topup",
                                  json={"amount": "1", "amount_micros": 1})
    _assert_error(response, 400, "invalid_request_error", "invalid_value")
    account = gateway.account("exact")
    _assert_integer_amounts(account)
    assert account["balance_micros"] == 1_300_007


# --------------------------------------------------------------------------------------------
# 7. 402


def test_insufficient_balance_is_402_and_unlimited_accounts_never_get_it(
        gateway: Gateway) -> None:
    broke = gateway.funded_key("broke", UNIT - 1)

    response = gateway.generate(broke, _unique())
    error = _assert_error(response, 402, "insufficient_quota", "insufficient_balance")
    assert error["param"] is None
    with pytest.raises(openai.APIStatusError) as raised:
        gateway.sdk(broke).images.generate(model="fake-image", prompt=_unique())
    assert raised.value.status_code == 402
    assert raised.value.code == "insufficient_balance"
    assert raised.value.type == "insufficient_quota"
    # n=2 when one image is affordable is refused as a whole: nothing is half-served.
    gateway.topup("broke", amount_micros=1)
    response = gateway.generate(broke, _unique(), n=2)
    _assert_error(response, 402, "insufficient_quota", "insufficient_balance")
    assert gateway.account("broke")["balance_micros"] == UNIT
    assert gateway.generate(broke, _unique(), n=1).status_code == 200
    assert gateway.account("broke")["balance_micros"] == 0

    gateway.create_account("whale", unlimited=True)
    whale = gateway.create_key("whale")
    for _ in range(5):
        response = gateway.generate(whale, _unique(), n=4)
        assert response.status_code == 200, response.text
    account = gateway.account("whale")
    _assert_integer_amounts(account)
    assert account["spent_micros"] == 20 * UNIT
    assert account["held_micros"] == 0
    assert all(r["status"] == 200 and r["cost_micros"] == 4 * UNIT
               for r in gateway.usage("whale"))


# --------------------------------------------------------------------------------------------
# 8. usage of requests that moved no money (written in batches, off the request path)


async def test_usage_of_requests_that_moved_no_money_is_recorded(gateway: Gateway) -> None:
    """Refusals of every kind and free generations, all at once: they land in one batch of the
    usage writer, and every one of them must come out of /admin/usage as it happened."""
    gateway.create_account("mixed", topup_micros=UNIT)
    key = gateway.create_key("mixed", allowed_models=["fake-image", "fake-free"])
    cases = [
        ({"model": "fake-image", "n": 4}, 402, "insufficient_balance"),
        ({"model": "fake-free"}, 200, None),  # free: nothing reserved, no settle transaction
        ({"model": "fake-image", "size": "13x13"}, 400, "invalid_size"),
        ({"model": "no-such-model"}, 404, "model_not_found"),
        ({"model": "fake-table"}, 403, "model_not_allowed"),
    ] * 4

    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=240,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        responses = await asyncio.gather(*(
            client.post("/v1/images/generations", json={"prompt": _unique(), **body})
            for body, _, _ in cases))

    expected = {}
    for (body, status, code), response in zip(cases, responses):
        assert response.status_code == status, (body, response.text)
        expected[response.headers["x-request-id"]] = (status, code)

    response = gateway.admin.get("/admin/usage", params={"account": "mixed"})
    assert response.status_code == 200, response.text
    rows = {r["request_id"]: r for r in response.json()["data"]}
    assert set(rows) == set(expected)
    for request_id, (status, code) in expected.items():
        row = rows[request_id]
        assert (row["status"], row["error_code"], row["cost_micros"]) == (status, code, 0), row
        assert row["images_delivered"] == (1 if status == 200 else 0), row
    account = gateway.account("mixed")
    assert (account["balance_micros"], account["held_micros"]) == (UNIT, 0)
