"""A client that leaves after its job went to an upstream still pays for it (docs/billing.md):
the upstream bills the operator whatever happens, so the job is finished in the background, its
image stored and charged, and the usage row says 499 `client_disconnected` with what was
delivered. A local job whose client leaves stops and stays free.

In-process (conftest's `inprocess`), against a real upstream on 127.0.0.1 that holds each
request until the test releases it. The client's disconnect is an ASGI `http.disconnect`
delivered exactly when the test says, so nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from holding_upstream import UNIT, holding_upstream
from sqlalchemy import text

TINY_PRICED = """
[models.tiny-sd.pricing]
per_image = "0.01"
"""


# --------------------------------------------------------------------------------------------
# helpers shared with test_admission.py


async def paid_key(srv: Any, account: str, balance_micros: int) -> str:
    """A key of a new account holding exactly `balance_micros`."""
    client, admin = srv.client, srv.auth()
    response = await client.post("/admin/accounts", json={"name": account}, headers=admin)
    assert response.status_code == 201, response.text
    response = await client.post(f"/admin/accounts/{account}/topup",
                                 json={"amount_micros": balance_micros}, headers=admin)
    assert response.status_code == 200, response.text
    response = await client.post("/admin/keys", json={"account": account, "name": "t"},
                                 headers=admin)
    assert response.status_code == 201, response.text
    return response.json()["key"]


async def account(srv: Any, name: str) -> dict[str, Any]:
    response = await srv.client.get(f"/admin/accounts/{name}", headers=srv.auth())
    assert response.status_code == 200, response.text
    return response.json()


async def usage(srv: Any, name: str) -> list[dict[str, Any]]:
    response = await srv.client.get("/admin/usage", params={"account": name},
                                    headers=srv.auth())
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def reservation_ids(srv: Any) -> set[str]:
    """Request ids of every reservation ever made (held, settled or released)."""
    engine = srv.app.state.service.accounts.engine
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT request_id FROM reservations"))
        return {row[0] for row in rows}


async def until(predicate: Callable[[], Any], what: str, timeout: float = 60) -> None:
    """Poll an async or plain predicate with a generous deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def post_then_leave(app: Any, path: str, body: dict[str, Any], key: str,
                          leave_when: Callable[[], Any],
                          headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """POST `body` through the app's ASGI interface as a client that disconnects once
    `leave_when` (awaited) returns; returns after the server's handler has ended, with the
    ASGI messages it sent."""
    payload = json.dumps(body).encode()
    gone = asyncio.Event()
    pending = [{"type": "http.request", "body": payload, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 40000), "server": ("testserver", 80),
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"authorization", f"Bearer {key}".encode()),
                    *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items())],
    }
    handler = asyncio.ensure_future(app(scope, receive, send))
    try:
        await leave_when()
    finally:
        gone.set()
    await asyncio.wait_for(handler, 60)
    return sent


def images_stored(srv: Any) -> list[str]:
    images = srv.data_dir / "images"
    return sorted(p.name for p in images.rglob("*") if p.is_file()) if images.exists() else []


# --------------------------------------------------------------------------------------------
# upstream: finished, stored and charged


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_client_that_leaves_an_upstream_job_pays_for_it(inprocess, stream: bool) -> None:
    with holding_upstream() as (upstream, config):
        srv = await inprocess(config=config)
        key = await paid_key(srv, "leaver", 5 * UNIT)
        body = {"model": "relayed", "prompt": "a harbour at night", "size": "1024x1024",
                "response_format": "b64_json"}
        if stream:
            body["stream"] = True

        await post_then_leave(srv.app, "/v1/images/generations", body, key,
                              lambda: upstream.until_held(1))
        # The client is gone and the upstream still works: nothing is settled yet.
        assert (await account(srv, "leaver"))["held_micros"] == UNIT

        upstream.release()
        await until(lambda: _row_settled(srv), "the detached job's usage row")
        (row,) = await usage(srv, "leaver")
        assert (row["status"], row["error_code"], row["images_delivered"],
                row["cost_micros"]) == (499, "client_disconnected", 1, UNIT)
        assert row["upstream_request_id"] == "upstream-1"
        balance = await account(srv, "leaver")
        assert (balance["balance_micros"], balance["held_micros"],
                balance["spent_micros"]) == (4 * UNIT, 0, UNIT)
        assert len(images_stored(srv)) == 1  # kept, although the client asked for b64_json
        assert upstream.calls == 1


@pytest.mark.parametrize("response_format", ["b64_json", "url"])
async def test_a_retry_with_the_same_idempotency_key_gets_the_job_its_client_left(
        inprocess, response_format: str) -> None:
    """The job a client left is finished and charged; its retry with the same Idempotency-Key
    replays that job's answer instead of running (and paying for) a second one, whether the
    retry comes while the upstream still works or after."""
    with holding_upstream() as (upstream, config):
        srv = await inprocess(config=config)
        key = await paid_key(srv, "leaver", 5 * UNIT)
        body = {"model": "relayed", "prompt": "a lighthouse", "size": "1024x1024",
                "response_format": response_format}
        retry_headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "job-7"}

        await post_then_leave(srv.app, "/v1/images/generations", body, key,
                              lambda: upstream.until_held(1), {"Idempotency-Key": "job-7"})
        retry = asyncio.ensure_future(srv.client.post("/v1/images/generations", json=body,
                                                      headers=retry_headers))
        upstream.release()
        first = await retry
        again = await srv.client.post("/v1/images/generations", json=body, headers=retry_headers)

        assert first.status_code == again.status_code == 200, first.text
        assert first.json()["data"] == again.json()["data"]
        assert upstream.calls == 1
        await until(lambda: _row_settled(srv), "the left job's usage row")
        balance = await account(srv, "leaver")
        assert (balance["balance_micros"], balance["held_micros"],
                balance["spent_micros"]) == (4 * UNIT, 0, UNIT)


async def _row_settled(srv: Any) -> bool:
    return any(r["status"] == 499 for r in await usage(srv, "leaver"))


async def test_a_client_that_leaves_before_its_request_went_upstream_pays_nothing(
        inprocess) -> None:
    """Not handed off yet (here: waiting for the deployment's only slot): leaving is free, and
    the upstream never hears of the request."""
    with holding_upstream() as (upstream, config):
        srv = await inprocess(config=config.replace("timeout_seconds = 120",
                                                    "timeout_seconds = 120\nmax_concurrency = 1"))
        key = await paid_key(srv, "leaver", 5 * UNIT)
        body = {"model": "relayed", "prompt": "a quiet field", "size": "1024x1024"}
        first = asyncio.ensure_future(srv.client.post(
            "/v1/images/generations", json=body, headers={"Authorization": f"Bearer {key}"}))
        await upstream.until_held(1)

        # The second has its place and its money, and waits for the slot the first holds.
        await post_then_leave(srv.app, "/v1/images/generations", body, key,
                              lambda: until(_held(srv, "leaver", 2 * UNIT), "its reservation"))
        await until(lambda: _row_settled(srv), "the cancelled request's usage row")
        (row,) = await usage(srv, "leaver")
        assert (row["status"], row["error_code"], row["cost_micros"],
                row["images_delivered"]) == (499, "client_disconnected", 0, 0)

        upstream.release()
        assert (await first).status_code == 200
        balance = await account(srv, "leaver")
        assert (balance["balance_micros"], balance["held_micros"],
                balance["spent_micros"]) == (4 * UNIT, 0, UNIT)
        assert upstream.calls == 1


# --------------------------------------------------------------------------------------------
# the request itself cancelled (a forced stop): its job is let go as a client's that left


async def post_then_cancel(app: Any, path: str, body: dict[str, Any], key: str,
                           cancel_when: Callable[[], Any]) -> None:
    """POST `body` through the app's ASGI interface, and cancel the request's task (as a
    server that stops without waiting does) once `cancel_when` (awaited) returns; the client
    never leaves."""
    payload = json.dumps(body).encode()
    pending = [{"type": "http.request", "body": payload, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        await asyncio.Event().wait()  # still connected
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        pass

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 40000), "server": ("testserver", 80),
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"authorization", f"Bearer {key}".encode())],
    }
    handler = asyncio.ensure_future(app(scope, receive, send))
    await cancel_when()
    handler.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(handler, 60)


async def test_a_cancelled_request_lets_its_upstream_job_finish_and_pays_for_it(
        inprocess) -> None:
    with holding_upstream() as (upstream, config):
        srv = await inprocess(config=config)
        key = await paid_key(srv, "stopped", 5 * UNIT)
        body = {"model": "relayed", "prompt": "a harbour at dawn", "size": "1024x1024",
                "response_format": "b64_json"}

        await post_then_cancel(srv.app, "/v1/images/generations", body, key,
                               lambda: upstream.until_held(1))
        service = srv.app.state.service
        await until(lambda: len(service._orphans) == 1, "the job to be let go")
        assert (await account(srv, "stopped"))["held_micros"] == UNIT

        upstream.release()
        await until(lambda: not service._orphans, "the job finished for nobody")
        await until(_has_row(srv, "stopped"), "its usage row")
        (row,) = await usage(srv, "stopped")
        assert (row["status"], row["error_code"], row["images_delivered"],
                row["cost_micros"]) == (499, "client_disconnected", 1, UNIT)
        balance = await account(srv, "stopped")
        assert (balance["balance_micros"], balance["held_micros"]) == (4 * UNIT, 0)
        assert len(images_stored(srv)) == 1
        assert upstream.calls == 1


async def test_a_cancelled_request_whose_job_had_not_gone_upstream_stops_it_unpaid(
        inprocess) -> None:
    with holding_upstream() as (upstream, config):
        srv = await inprocess(config=config.replace("timeout_seconds = 120",
                                                    "timeout_seconds = 120\nmax_concurrency = 1"))
        key = await paid_key(srv, "stopped", 5 * UNIT)
        body = {"model": "relayed", "prompt": "a quiet field", "size": "1024x1024"}
        first = asyncio.ensure_future(srv.client.post(
            "/v1/images/generations", json=body, headers={"Authorization": f"Bearer {key}"}))
        await upstream.until_held(1)

        # The second has its place and its money, and waits for the slot the first holds.
        await post_then_cancel(srv.app, "/v1/images/generations", body, key,
                               lambda: until(_held(srv, "stopped", 2 * UNIT), "its reservation"))
        await until(_has_row(srv, "stopped"), "the cancelled request's usage row")
        (row,) = await usage(srv, "stopped")
        assert (row["status"], row["error_code"], row["cost_micros"],
                row["images_delivered"]) == (499, "client_disconnected", 0, 0)

        upstream.release()
        assert (await first).status_code == 200
        balance = await account(srv, "stopped")
        assert (balance["balance_micros"], balance["held_micros"],
                balance["spent_micros"]) == (4 * UNIT, 0, UNIT)
        assert upstream.calls == 1  # the cancelled request never went upstream


# --------------------------------------------------------------------------------------------
# local: stops, free


async def test_client_that_leaves_a_local_job_pays_nothing(inprocess) -> None:
    srv = await inprocess(config=TINY_PRICED, engine_max_queue=4)
    key = await paid_key(srv, "local-leaver", 5 * UNIT)
    service = srv.app.state.service
    worker = service.providers["local"]._worker(service.catalog.get("tiny-sd"))
    release = threading.Event()
    blocker = asyncio.ensure_future(worker.submit(lambda pipe, context: release.wait(120)))
    try:
        await until(lambda: worker.stats.running and worker.pending == 0, "the blocker to run")

        async def queued_and_paid() -> None:
            await until(lambda: worker.pending == 1, "the request to queue")
            await until(_held(srv, "local-leaver", UNIT), "its reservation")

        await post_then_leave(srv.app, "/v1/images/generations",
                              {"model": "tiny-sd", "prompt": "a kite", "size": "64x64"},
                              key, queued_and_paid)
    finally:
        release.set()
        await blocker
    await until(_has_row(srv, "local-leaver"), "the usage row")
    (row,) = await usage(srv, "local-leaver")
    assert (row["status"], row["error_code"], row["cost_micros"], row["images_delivered"]) == (
        499, "client_disconnected", 0, 0)
    balance = await account(srv, "local-leaver")
    assert (balance["balance_micros"], balance["held_micros"], balance["spent_micros"]) == (
        5 * UNIT, 0, 0)
    assert worker.stats.jobs_cancelled >= 1  # skipped, never generated


def _held(srv: Any, name: str, amount: int) -> Callable[[], Any]:
    async def check() -> bool:
        return (await account(srv, name))["held_micros"] == amount
    return check


def _has_row(srv: Any, name: str) -> Callable[[], Any]:
    async def check() -> bool:
        return bool(await usage(srv, name))
    return check
