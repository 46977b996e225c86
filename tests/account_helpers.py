"""What the account, billing-dashboard and admin-view tests share: an in-process server with the
fake provider (fake_providers.py) priced at 0.01 an image, and its operator's and users' moves
through the admin and public APIs; usage rows at chosen times go straight into its database."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import httpx
from conftest import InProcess
from sqlalchemy import insert

from imagegate.accounts.tables import UsageRecord

UNIT = 10_000
"""Micros per fake-image."""

CONFIG = """
[providers]
fake = "fake_providers:FakeProvider"

[models.fake-image]
backend = "fake"
[models.fake-image.capabilities]
max_n = 4
[models.fake-image.pricing]
per_image = "0.01"

[models.fake-other]
backend = "fake"
[models.fake-other.pricing]
per_image = "0.02"
"""


def name(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def error(response: httpx.Response, status: int, param: Any = ...,
          code: str | None = None) -> dict[str, Any]:
    """The OpenAI envelope of an error answer, checked."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"], body
    if param is not ...:
        assert body["error"]["param"] == param, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return dict(body["error"])


async def account(srv: InProcess, micros: int = 0, **fields: Any) -> dict[str, Any]:
    """A new account holding `micros` (made with `fields`: unlimited, price_multiplier)."""
    response = await srv.client.post("/admin/accounts", headers=srv.auth(),
                                     json={"name": name("acct"), **fields})
    assert response.status_code == 201, response.text
    made = response.json()
    if micros:
        response = await srv.client.post(f"/admin/accounts/{made['id']}/topup",
                                         headers=srv.auth(), json={"amount_micros": micros})
        assert response.status_code == 200, response.text
        made = response.json()
    return dict(made)


async def key(srv: InProcess, owner: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A new key of `owner`: its fields, and the key itself under `key`."""
    response = await srv.client.post("/admin/keys", headers=srv.auth(),
                                     json={"account": owner["id"], "name": name("key"),
                                           **fields})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def generate(srv: InProcess, api_key: str, prompt: str = "ok", *,
                   model: str = "fake-image", n: int = 1) -> httpx.Response:
    return await srv.client.post("/v1/images/generations", headers=bearer(api_key), json={
        "model": model, "prompt": f"{prompt} {uuid.uuid4().hex}", "n": n,
        "response_format": "b64_json"})


async def get(srv: InProcess, api_key: str, path: str, **params: Any) -> httpx.Response:
    return await srv.client.get(path, headers=bearer(api_key), params=params)


async def insert_usage(srv: InProcess, owner: dict[str, Any], at: datetime, *,
                       key_id: int | None = None, model: str = "fake-image",
                       images: int = 1, cost_micros: int = UNIT, status: int = 200) -> str:
    """A usage row of `owner` written at `at`, as a request would leave it; its request id."""
    request_id = f"req_{uuid.uuid4().hex}"
    engine = srv.app.state.service.accounts.engine
    async with engine.begin() as conn:
        await conn.execute(insert(UsageRecord).values(
            created_at=at, request_id=request_id, key_id=key_id, account_id=owner["id"],
            endpoint="images.generations", model=model, deployment="fake", n=images,
            size="1024x1024", images_delivered=images if status < 400 else 0,
            cost_micros=cost_micros if status < 400 else 0, status=status,
            error_code=None if status < 400 else "generation_failed", latency_ms=5))
    return request_id
