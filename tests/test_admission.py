"""Admission before money, and bounded memory (docs/billing.md, docs/api.md "Input images").

A request first takes its place in the backend's bounded queue (the local engine's waiting line,
the relay's in-flight bound) and only then reserves its price: a 429 never holds any balance,
not even for a moment, so an account whose balance covers exactly the admitted jobs never sees
a 402. Input images larger than the model works at are reduced as they are decoded, and the
pixels being decoded server-wide are capped (429 past the cap, not an allocation).

In-process (conftest's `inprocess`); queues are filled by jobs that wait on the test's signal,
never by timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from holding_upstream import UNIT, holding_upstream
from PIL import Image
from test_upstream_disconnect import (
    TINY_PRICED,
    account,
    paid_key,
    reservation_ids,
    until,
    usage,
)

from imagegate.errors import ServerBusy
from imagegate.generation import GeneratedImage, ProviderResult
from imagegate.imaging.decoding import decode_image
from imagegate.providers.base import ProviderBase, Ticket
from imagegate.service import working_edge


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _assert_busy(response: Any) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "server_busy")
    assert int(response.headers["retry-after"]) >= 1


async def _held(srv: Any, name: str) -> int:
    return (await account(srv, name))["held_micros"]


# --------------------------------------------------------------------------------------------
# the local engine's queue


async def test_full_engine_queue_answers_429_and_never_touches_the_balance(inprocess) -> None:
    srv = await inprocess(config=TINY_PRICED, engine_max_queue=1)
    key = await paid_key(srv, "exact", UNIT)  # exactly the one job that fits in the queue
    service = srv.app.state.service
    worker = service.providers["local"]._worker(service.catalog.get("tiny-sd"))
    release = threading.Event()
    blocker = asyncio.ensure_future(worker.submit(lambda pipe, context: release.wait(120)))
    body = {"model": "tiny-sd", "prompt": "a lantern", "size": "64x64",
            "response_format": "b64_json"}
    try:
        await until(lambda: worker.stats.running and worker.pending == 0, "the blocker to run")
        admitted = asyncio.ensure_future(srv.client.post(
            "/v1/images/generations", json=body, headers=_bearer(key)))
        await until(lambda: worker.pending == 1, "the first request's place")
        await until(lambda: _is_held(srv, "exact", UNIT), "its reservation")

        # Past the queue: 429, although the account's whole balance is held right now.
        refused = await asyncio.gather(*(srv.client.post(
            "/v1/images/generations", json=body, headers=_bearer(key)) for _ in range(4)))
        for response in refused:
            _assert_busy(response)
        assert await _held(srv, "exact") == UNIT  # only the admitted job's money, ever
    finally:
        release.set()
        await blocker
    assert (await admitted).status_code == 200

    refused_ids = {r.headers["x-request-id"] for r in refused}
    assert not refused_ids & await reservation_ids(srv)  # never reserved, even for a moment
    rows = {r["request_id"]: r for r in await usage(srv, "exact")}
    assert {rows[i]["status"] for i in refused_ids} == {429}
    assert all(rows[i]["cost_micros"] == 0 for i in refused_ids)
    balance = await account(srv, "exact")
    assert (balance["balance_micros"], balance["held_micros"], balance["spent_micros"]) == (
        0, 0, UNIT)


async def _is_held(srv: Any, name: str, amount: int) -> bool:
    return await _held(srv, name) == amount


# --------------------------------------------------------------------------------------------
# the relay's in-flight bound


async def test_upstream_in_flight_bound_answers_429_and_admitted_requests_succeed(
        inprocess) -> None:
    with holding_upstream() as (upstream, config):
        srv = await inprocess(config=config, upstream_max_in_flight=2)
        key = await paid_key(srv, "relay", 2 * UNIT)  # exactly the two that fit
        body = {"model": "relayed", "prompt": "a lighthouse", "size": "1024x1024",
                "response_format": "b64_json"}
        in_flight = [asyncio.ensure_future(srv.client.post(
            "/v1/images/generations", json=body, headers=_bearer(key))) for _ in range(2)]
        await upstream.until_held(2)

        refused = await srv.client.post("/v1/images/generations", json=body,
                                        headers=_bearer(key))
        _assert_busy(refused)
        assert refused.headers["x-request-id"] not in await reservation_ids(srv)
        assert upstream.calls == 2

        upstream.release()
        for response in await asyncio.gather(*in_flight):
            assert response.status_code == 200, response.text
        assert upstream.calls == 2
        balance = await account(srv, "relay")
        assert (balance["balance_micros"], balance["spent_micros"]) == (0, 2 * UNIT)

        # Places are free again once the jobs ended.
        assert (await srv.client.post("/v1/images/generations", json=body,
                                      headers=srv.auth())).status_code == 200


# --------------------------------------------------------------------------------------------
# an operator's providers: admitted by their own `admit`, or at once


class Plain:
    """A provider written against the `Provider` methods alone: admitted at once."""

    name = "plain"

    def __init__(self, settings: Any) -> None:
        pass

    def describe(self, spec: Any) -> dict[str, Any]:
        return {}

    async def aclose(self) -> None:
        pass

    async def generate(self, spec: Any, request: Any, progress: Any = None) -> ProviderResult:
        image = Image.new("RGB", (request.width, request.height), (10, 120, 200))
        return ProviderResult(images=[GeneratedImage(image, seed=request.seeds[0])])


class Queued(ProviderBase, Plain):
    """One with a queue of its own (`ProviderBase.admit`), full for prompts that say so."""

    name = "queued"

    @contextlib.asynccontextmanager
    async def admit(self, spec: Any, request: Any) -> AsyncIterator[Ticket]:
        if request.prompt.startswith("full"):
            raise ServerBusy("No place.", headers={"retry-after": "3"})
        yield Ticket()


OPERATORS = """
[providers]
plain = "test_admission:Plain"
queued = "test_admission:Queued"

[models.plain-image]
backend = "plain"
[models.plain-image.pricing]
per_image = "0.01"

[models.queued-image]
backend = "queued"
[models.queued-image.pricing]
per_image = "0.01"
"""


async def test_an_operators_provider_is_admitted_by_its_own_admit_or_at_once(inprocess) -> None:
    srv = await inprocess(config=OPERATORS)
    key = await paid_key(srv, "ops", 2 * UNIT)

    async def post(model: str, prompt: str) -> Any:
        return await srv.client.post("/v1/images/generations", headers=_bearer(key), json={
            "model": model, "prompt": prompt, "size": "256x256",
            "response_format": "b64_json"})

    refused = await post("queued-image", "full house")
    _assert_busy(refused)
    assert refused.headers["retry-after"] == "3"
    assert refused.headers["x-request-id"] not in await reservation_ids(srv)
    for model in ("queued-image", "plain-image"):
        response = await post(model, "a lighthouse")
        assert response.status_code == 200, response.text
    assert (await account(srv, "ops"))["spent_micros"] == 2 * UNIT


# --------------------------------------------------------------------------------------------
# decoded pixels: a cap per image, reduction to the model's size, a budget in flight


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    """6000x6000 pixels in about 35 KB: small to send, 36 M pixels to decode."""
    buf = io.BytesIO()
    Image.new("L", (6000, 6000), 90).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _edit(srv: Any, png: bytes) -> Any:
    return srv.client.post(
        "/v1/images/edits", headers=srv.auth(),
        files={"image": ("huge.png", png, "image/png")},
        data={"model": "tiny-sd", "prompt": "make it blue", "size": "64x64",
              "response_format": "b64_json"})


async def test_an_image_over_the_default_pixel_cap_is_refused(inprocess, huge_png) -> None:
    srv = await inprocess()
    response = await _edit(srv, huge_png)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("image_too_many_pixels", "image")


def test_an_image_is_reduced_to_the_models_working_size_as_it_is_decoded(huge_png) -> None:
    from imagegate.catalog import Catalog

    edge = working_edge(Catalog.from_config().get("tiny-sd"))
    assert edge is not None and edge < 6000
    decoded = decode_image(huge_png, param="image", max_pixels=40_000_000, max_edge=edge)
    assert decoded.image.size == (edge, edge)
    assert decoded.image.getpixel((edge // 2, edge // 2)) == (90, 90, 90)


async def test_decoding_past_the_pixel_budget_answers_429(inprocess, huge_png) -> None:
    srv = await inprocess(fetch_max_pixels=40_000_000, fetch_max_pixels_in_flight=40_000_000)
    budget = srv.app.state.service.references.budget
    budget.take(5_000_000)  # another request is decoding a 5 M pixel image right now
    try:
        refused = await _edit(srv, huge_png)
    finally:
        budget.give_back(5_000_000, 0.0)
    _assert_busy(refused)
    assert refused.headers["x-request-id"] not in await reservation_ids(srv)

    # With the room back, the same edit is decoded, reduced, and served.
    served = await _edit(srv, huge_png)
    assert served.status_code == 200, served.text
    assert budget.used == 0
