"""The images `/v1/responses` answers returned, found again by response id or item id.

Multi-turn editing (`previous_response_id`, or an `image_generation_call` item passed back)
needs the earlier image. Its bytes are kept in the image store for `url_ttl_seconds`, like any
generated image; a row here says which stored file belongs to which response, and whose it is.
An answer is found only by its own account, and only for as long as its image is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import ColumnElement, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from .ledger import utcnow
from .tables import ResponseImage


@dataclass(frozen=True)
class KeptImage:
    item_id: str
    output_index: int
    name: str
    """The file's name in the image store."""


class ResponseImages:
    def __init__(self, engine: AsyncEngine, ttl_seconds: float) -> None:
        self.engine = engine
        self.ttl = timedelta(seconds=ttl_seconds)

    async def record(self, account_id: int, response_id: str, images: list[KeptImage]) -> None:
        """Keep `images` as `response_id`'s; rows past their lifetime go in the same breath
        (the created_at index makes that cheap when there are none)."""
        now = utcnow()
        async with self.engine.begin() as conn:
            await conn.execute(delete(ResponseImage).where(ResponseImage.created_at
                                                           < now - self.ttl))
            if images:
                await conn.execute(insert(ResponseImage), [
                    {"item_id": image.item_id, "response_id": response_id,
                     "account_id": account_id, "output_index": image.output_index,
                     "image": image.name, "created_at": now} for image in images])

    async def of_response(self, account_id: int, response_id: str) -> list[KeptImage]:
        """The response's images in output order; [] when it is unknown, another account's,
        or older than the images are kept."""
        return await self._find(account_id, ResponseImage.response_id == response_id)

    async def item(self, account_id: int, item_id: str) -> KeptImage | None:
        found = await self._find(account_id, ResponseImage.item_id == item_id)
        return found[0] if found else None

    async def _find(self, account_id: int, condition: ColumnElement[bool]) -> list[KeptImage]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                select(ResponseImage.item_id, ResponseImage.output_index, ResponseImage.image)
                .where(condition, ResponseImage.account_id == account_id,
                       ResponseImage.created_at >= utcnow() - self.ttl)
                .order_by(ResponseImage.output_index))).all()
        return [KeptImage(row.item_id, row.output_index, row.image) for row in rows]
