"""A client that leaves a stream: chat completions, image generations and the Responses API all
behave alike (api/streaming.py). In-process, through the app's ASGI interface, with a provider
that holds every job until it is cancelled: the client leaves during the head start (the answer
is a 499, never a 200) or after the stream began, and either way the job is cancelled, nothing
is charged and the usage row says 499 `client_disconnected`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import pytest_asyncio

from imagegate.api import streaming
from imagegate.generation import ProviderResult

UNIT = 10_000  # micros per image
TOPUP = 10 * UNIT

CONFIG = """
[providers]
holding = "test_stream_leaving:HoldingProvider"

[models.held]
backend = "holding"
[models.held.pricing]
per_image = "0.01"
"""

STREAMS = {
    "chat": ("/v1/chat/completions", {
        "model": "held", "stream": True, "messages": [{"role": "user", "content": "a fox"}]}),
    "images": ("/v1/images/generations", {"model": "held", "stream": True, "prompt": "a fox"}),
    "responses": ("/v1/responses", {"model": "held", "stream": True, "input": "a fox"}),
}


class _Held:
    """What the provider saw in this test: a job started, jobs cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = 0


HELD = _Held()


class HoldingProvider:
    """Holds every job until it is cancelled (a local job's way: it stops, free)."""

    name = "holding"

    def __init__(self, settings: Any) -> None:
        pass

    def describe(self, spec: Any) -> dict[str, Any]:
        return {}

    async def aclose(self) -> None:
        pass

    async def generate(self, spec: Any, request: Any, progress: Any = None) -> ProviderResult:
        HELD.started.set()
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            HELD.cancelled += 1
            raise
        raise AssertionError("a held job was never let go")


@pytest_asyncio.fixture(loop_scope="module")
async def gateway(shared_inprocess: Any) -> Any:
    """The module's one app (each test has an account of its own, and its job has ended when
    the test does); what the provider saw, afresh."""
    global HELD
    HELD = _Held()
    return await shared_inprocess(config=CONFIG)


async def _user_key(srv: Any, account: str) -> str:
    post = srv.client.post
    assert (await post("/admin/accounts", headers=srv.auth(),
                       json={"name": account})).status_code == 201
    assert (await post(f"/admin/accounts/{account}/topup", headers=srv.auth(),
                       json={"amount_micros": TOPUP})).status_code == 200
    created = await post("/admin/keys", headers=srv.auth(), json={"account": account, "name": "k"})
    return str(created.json()["key"])


async def _post_and_leave(app: Any, path: str, body: dict[str, Any], key: str, *,
                          mid_stream: bool) -> list[dict[str, Any]]:
    """POST `body`, and disconnect once the provider holds the job (and, `mid_stream`, once the
    stream has sent its first bytes); the messages the app sent."""
    payload = json.dumps(body).encode()
    sent: list[dict[str, Any]] = []
    began = asyncio.Event()
    body_read = False

    async def receive() -> dict[str, Any]:
        nonlocal body_read
        if not body_read:
            body_read = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await HELD.started.wait()
        if mid_stream:
            await began.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            began.set()

    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
        "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"authorization", f"Bearer {key}".encode())],
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), 60)
    return sent


async def _settled_row(srv: Any, account: str) -> dict[str, Any]:
    """The account's one usage row, once the let-go job has ended and settled."""
    deadline = time.monotonic() + 60
    while True:
        rows = (await srv.client.get("/admin/usage", headers=srv.auth(),
                                     params={"account": account})).json()["data"]
        if rows:
            [row] = rows
            return dict(row)
        assert time.monotonic() < deadline, "the job that was let go never settled"
        await asyncio.sleep(0.05)


async def _assert_nothing_charged(srv: Any, account: str, endpoint: str) -> None:
    row = await _settled_row(srv, account)
    assert (row["status"], row["error_code"], row["images_delivered"], row["cost_micros"]) == (
        499, "client_disconnected", 0, 0), row
    assert row["endpoint"] == endpoint
    info = (await srv.client.get(f"/admin/accounts/{account}", headers=srv.auth())).json()
    assert (info["balance_micros"], info["held_micros"]) == (TOPUP, 0)
    assert HELD.cancelled == 1


_ENDPOINTS = {"chat": "chat.completions", "images": "images.generations",
              "responses": "responses"}


@pytest.mark.parametrize("kind", list(STREAMS))
async def test_leaving_during_the_head_start_cancels_the_job_unpaid(
        gateway: Any, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    monkeypatch.setattr(streaming, "HEAD_START_SECONDS", 120.0)  # the client leaves within it
    account = f"head-start-{kind}"
    path, body = STREAMS[kind]
    sent = await _post_and_leave(gateway.app, path, body, await _user_key(gateway, account),
                                 mid_stream=False)
    [start] = [m for m in sent if m["type"] == "http.response.start"]
    assert start["status"] == 499  # no 200 went out: the stream never began
    await _assert_nothing_charged(gateway, account, _ENDPOINTS[kind])


@pytest.mark.parametrize("kind", list(STREAMS))
async def test_leaving_after_the_stream_began_cancels_the_job_unpaid(
        gateway: Any, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    monkeypatch.setattr(streaming, "HEAD_START_SECONDS", 0.05)
    account = f"mid-stream-{kind}"
    path, body = STREAMS[kind]
    sent = await _post_and_leave(gateway.app, path, body, await _user_key(gateway, account),
                                 mid_stream=True)
    [start] = [m for m in sent if m["type"] == "http.response.start"]
    assert start["status"] == 200
    assert dict(start["headers"])[b"content-type"].startswith(b"text/event-stream")
    await _assert_nothing_charged(gateway, account, _ENDPOINTS[kind])
