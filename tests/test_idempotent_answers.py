"""Answers kept for an `Idempotency-Key` live in a store of their own, never among the images:
replayed by a later process (a restart) for as long as image links live, then swept with their
rows. On SQLite and, with IMAGEGATE_TEST_DATABASE_URL, on PostgreSQL."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_providers import calls
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from imagegate.accounts.idempotency import (
    FILE_REF,
    Idempotency,
    IdempotencyConflict,
    Scope,
    forget_old,
)
from imagegate.accounts.tables import IdempotencyRecord
from imagegate.app import create_app
from imagegate.settings import Settings
from imagegate.storage import ANSWER_TYPES, LocalStore

SCOPE = Scope(account_id=1, key_id=1, endpoint="images.generations")
B64_ANSWER = {"created": 1, "data": [{"b64_json": "aGVsbG8="}]}
URL_ANSWER = {"created": 1, "data": [{"url": "https://example.test/v1/media/x.png"}]}
ADMIN_KEY = "sk-ig-idempotent-answers-admin-0000000"
CONFIG = """
[providers]
fake = "fake_providers:FakeProvider"

[models.fake-image]
backend = "fake"
"""


def _answers(tmp_path: Path, ttl: int = 3600) -> LocalStore:
    return LocalStore(tmp_path / "answers", ttl, ANSWER_TYPES)


async def _produce_once(idempotency: Idempotency, answer: dict[str, Any], key: str = "k",
                        body: bytes = b'{"prompt": "p"}') -> tuple[dict[str, Any], int]:
    produced = 0

    async def produce() -> dict[str, Any]:
        nonlocal produced
        produced += 1
        return answer

    return await idempotency.run(SCOPE, key, body, produce), produced


async def _row(engine: AsyncEngine, key: str = "k") -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(select(IdempotencyRecord).where(*SCOPE.where(key)))).first()


async def test_a_base64_answer_is_kept_in_the_answer_store(engine: AsyncEngine,
                                                           tmp_path: Path) -> None:
    answers = _answers(tmp_path)
    got, produced = await _produce_once(Idempotency(engine, answers), B64_ANSWER)
    assert (got, produced) == (B64_ANSWER, 1)
    row = await _row(engine)
    name = row.response[FILE_REF]  # the row names the stored body; no image bytes in the row
    assert "aGVsbG8=" not in str(row.response)
    assert name.endswith(".json") and answers.read(name)


async def test_an_answer_without_images_stays_in_the_row(engine: AsyncEngine,
                                                         tmp_path: Path) -> None:
    answers = _answers(tmp_path)
    await _produce_once(Idempotency(engine, answers), URL_ANSWER)
    assert (await _row(engine)).response == URL_ANSWER
    assert not (tmp_path / "answers").exists()


async def test_another_process_replays_the_answer(engine: AsyncEngine, tmp_path: Path) -> None:
    """A restart (or another replica sharing the store) replays without producing again."""
    await _produce_once(Idempotency(engine, _answers(tmp_path), holder="first"), B64_ANSWER)
    later = Idempotency(engine, _answers(tmp_path), holder="second")
    assert await _produce_once(later, B64_ANSWER) == (B64_ANSWER, 0)


async def test_expired_answers_are_swept_with_their_rows(engine: AsyncEngine,
                                                         tmp_path: Path) -> None:
    answers = _answers(tmp_path, ttl=60)
    idempotency = Idempotency(engine, answers)
    await _produce_once(idempotency, B64_ANSWER)

    # The body is swept once image links of its age have expired: a retry is told so ...
    assert answers.sweep(now=time.time() + 30) == 0
    assert answers.sweep(now=time.time() + 65) == 1
    with pytest.raises(IdempotencyConflict) as info:
        await _produce_once(idempotency, B64_ANSWER)
    assert info.value.code == "idempotency_key_expired"

    # ... and once the row is forgotten too, the key is a new request.
    assert await forget_old(engine, done_seconds=0, running_seconds=900) == 1
    assert await _row(engine) is None
    assert await _produce_once(idempotency, B64_ANSWER) == (B64_ANSWER, 1)


# --- through the server ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _server(data_dir: Path, tiny_models_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    config = data_dir / "imagegate.toml"
    config.write_text(CONFIG)
    app = create_app(Settings.load(config, data_dir=data_dir, models_dir=tiny_models_dir,
                                   auth="on", admin_key=ADMIN_KEY, log_level="warning"))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver",
            timeout=240) as client:
        yield client


async def test_replays_survive_a_restart_and_leave_the_image_store_alone(
        tmp_path: Path, tiny_models_dir: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Idempotency-Key": "over-a-restart"}
    body = {"model": "fake-image", "prompt": "over a restart", "response_format": "b64_json"}
    async with _server(data_dir, tiny_models_dir) as client:
        first = await client.post("/v1/images/generations", headers=headers, json=body)
        assert first.status_code == 200, first.text
    async with _server(data_dir, tiny_models_dir) as client:
        replay = await client.post("/v1/images/generations", headers=headers, json=body)
        assert replay.status_code == 200, replay.text
    assert replay.json() == first.json()
    assert len(calls(data_dir, "over a restart")) == 1
    assert [p.suffix for p in (data_dir / "answers").rglob("*") if p.is_file()] == [".json"]
    assert not [p for p in (data_dir / "images").rglob("*") if p.is_file()]
