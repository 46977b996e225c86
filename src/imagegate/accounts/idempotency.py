"""`Idempotency-Key`: a retried request gets the first one's answer and is charged once.

A key is scoped to its caller and its endpoint: (account, API key, endpoint, key). The same key
sent to another endpoint, or by another API key, is another request with its own answer, so an
answer is only ever replayed in its own endpoint's shape.

The first request with a key inserts a `running` row (the primary key makes this a lock that
works across processes and replicas), does the work, and stores the answer. Retries with the
same body wait for that answer and replay it; a different body under the same key is a 409. A
failed first attempt removes its row, so a retry runs again (nothing was charged). The row names
the server process running it (`holder`): when that process is gone (incarnation.py), any
server's start-up or sweep removes the claim, so a retry runs again at once.

Answers carrying base64 images are kept in a store of their own (storage/base.py's `BlobStore`:
`DATA_DIR/answers/` on the local disk), referenced from the row, so no image bytes go into the
database and the image store holds images only; they are replayable for as long as image links
live, and swept with their rows.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from ..errors import APIError
from ..storage import BlobStore
from .ledger import utcnow
from .tables import IdempotencyRecord

MAX_KEY_LENGTH = 255
ENDPOINT_LENGTH = 64
FILE_REF = "$stored_response"


class IdempotencyConflict(APIError):
    status = 409
    code = "idempotency_key_reused"


@dataclass(frozen=True)
class Scope:
    """Whose key it is, and for which endpoint."""

    account_id: int
    key_id: int | None
    endpoint: str

    def where(self, key: str) -> tuple[Any, ...]:
        return (IdempotencyRecord.account_id == self.account_id,
                IdempotencyRecord.key_id == (self.key_id or 0),
                IdempotencyRecord.endpoint == self.endpoint,
                IdempotencyRecord.key == key)


class Idempotency:
    def __init__(self, engine: AsyncEngine, answers: BlobStore,
                 wait_seconds: float = 900.0, holder: str | None = None) -> None:
        self.engine = engine
        self.answers = answers
        """Where answers with base64 images are kept (a store of `.json` objects)."""
        self.wait_seconds = wait_seconds
        self.holder = holder
        """This server process (incarnation.py), written on its claims."""

    async def run(self, scope: Scope, key: str, body: bytes,
                  produce: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """The answer for (scope, key): produced here once, replayed to every retry."""
        if not key or len(key) > MAX_KEY_LENGTH:
            raise APIError(f"`Idempotency-Key` must be 1 to {MAX_KEY_LENGTH} characters.",
                           param="Idempotency-Key", code="invalid_idempotency_key")
        if len(scope.endpoint) > ENDPOINT_LENGTH:  # a route of ours: never the client's input
            raise ValueError(f"endpoint name too long: {scope.endpoint!r}")
        body_hash = _body_hash(body)
        deadline = time.monotonic() + self.wait_seconds
        while True:
            if await self._claim(scope, key, body_hash):
                return await self._produce_and_keep(scope, key, produce)
            found = await self._load(scope, key)
            if found is None:
                continue  # the first attempt failed and let go: try to claim it ourselves
            if found.body_hash != body_hash:
                raise IdempotencyConflict(
                    "This Idempotency-Key was already used with a different request body.",
                    param="Idempotency-Key")
            if found.state == "done":
                return await asyncio.to_thread(self._unpack, found.response)
            if time.monotonic() > deadline:
                raise IdempotencyConflict(
                    "A request with this Idempotency-Key is still in progress.",
                    param="Idempotency-Key", code="idempotency_key_in_progress")
            await asyncio.sleep(0.1)

    async def _claim(self, scope: Scope, key: str, body_hash: str) -> bool:
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(IdempotencyRecord).values(
                    account_id=scope.account_id, key_id=scope.key_id or 0,
                    endpoint=scope.endpoint, key=key, body_hash=body_hash, state="running",
                    holder=self.holder, created_at=utcnow()))
        except IntegrityError:
            return False
        return True

    async def _load(self, scope: Scope, key: str) -> Any:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(IdempotencyRecord).where(*scope.where(key)))
                    ).first()

    async def _produce_and_keep(self, scope: Scope, key: str,
                                produce: Callable[[], Awaitable[dict[str, Any]]]
                                ) -> dict[str, Any]:
        where = scope.where(key)
        try:
            answer = await produce()
        except BaseException:
            async with self.engine.begin() as conn:  # let a retry run again
                await conn.execute(delete(IdempotencyRecord).where(*where))
            raise
        packed = await asyncio.to_thread(self._pack, answer)
        async with self.engine.begin() as conn:
            await conn.execute(update(IdempotencyRecord).where(*where)
                               .values(state="done", status=200, response=packed))
        return answer

    def _pack(self, answer: dict[str, Any]) -> dict[str, Any]:
        if not _has_base64(answer):
            return answer
        return {FILE_REF: self.answers.put(json.dumps(answer).encode(), "json")}

    def _unpack(self, packed: dict[str, Any] | None) -> dict[str, Any]:
        if packed is None:
            raise IdempotencyConflict("The first response for this key was not kept.")
        if FILE_REF not in packed:
            return packed
        try:
            answer: dict[str, Any] = json.loads(self.answers.read(packed[FILE_REF]))
        except APIError:
            raise IdempotencyConflict(
                "The first response for this Idempotency-Key has expired.",
                param="Idempotency-Key", code="idempotency_key_expired") from None
        return answer


async def forget_old(engine: AsyncEngine, *, done_seconds: float, running_seconds: float) -> int:
    """Drop answers older than their replay window, and claims whose worker died mid-way."""
    now = utcnow()
    async with engine.begin() as conn:
        gone = await conn.execute(delete(IdempotencyRecord).where(
            ((IdempotencyRecord.state == "done")
             & (IdempotencyRecord.created_at < now - timedelta(seconds=done_seconds)))
            | ((IdempotencyRecord.state == "running")
               & (IdempotencyRecord.created_at < now - timedelta(seconds=running_seconds)))))
    return gone.rowcount or 0


async def release_claims(engine: AsyncEngine, dead: list[str]) -> int:
    """Remove the `running` claims of server processes that are gone: their work stopped with
    them (nothing was charged), so a retry must run again rather than wait."""
    if not dead:
        return 0
    async with engine.begin() as conn:
        gone = await conn.execute(delete(IdempotencyRecord).where(
            IdempotencyRecord.state == "running", IdempotencyRecord.holder.in_(dead)))
    return gone.rowcount or 0


def _body_hash(body: bytes) -> str:
    """Same JSON, same hash: key order and whitespace don't make a body different."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = body
    return hashlib.sha256(canonical).hexdigest()


def _has_base64(answer: dict[str, Any]) -> bool:
    """Images API `data[].b64_json`, or Responses API `output[].result`."""
    items = [*(answer.get("data", []) or []), *(answer.get("output", []) or [])]
    return any(isinstance(item, dict) and (item.get("b64_json") or item.get("result"))
               for item in items)
