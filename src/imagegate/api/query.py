"""Query and path parameters the account and admin routers share: the text rule every value
keeps, and the filters of usage listings and summaries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import Query, Request
from pydantic_core import PydanticCustomError

from ..accounts.admin import MAX_ID
from ..accounts.usage_summary import MAX_UTC_OFFSET_MINUTES
from ..errors import InvalidRequest
from ..protocol.wire import MAX_MODEL_CHARS, Instant, check_text

STATUS_PATTERN = "^(succeeded|failed|[1-5][0-9][0-9])$"

CSV_RESPONSES: dict[int | str, dict[str, Any]] = {200: {
    "description": "Usage records, oldest first: JSON, or CSV with `format=csv`.",
    "content": {"application/json": {"schema": {"type": "object"}},
                "text/csv": {"schema": {"type": "string"}}}}}
"""The OpenAPI answer of a usage listing, which is JSON or CSV."""
CSV_DOWNLOAD = {"content-disposition": 'attachment; filename="imagegate-usage.csv"'}
"""A usage listing as CSV is a file to save (a browser downloads it under this name)."""


async def valid_parameters(request: Request) -> None:
    """Path and query values are text for the database too: no NUL (or lone surrogate)."""
    for values in (request.path_params, request.query_params):
        for name, value in values.items():
            try:
                check_text(value, name)
            except PydanticCustomError as exc:
                raise InvalidRequest(exc.message(), param=name) from None


@dataclass(frozen=True)
class UsageQuery:
    """The filters of a usage listing or summary, as `Admin.usage` takes them."""

    key_id: int | None
    model: str | None
    since: datetime | None
    until: datetime | None
    status: str | None

    def filters(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "model": self.model, "since": self.since,
                "until": self.until, "status": self.status}


def usage_query(key: int | None = Query(None, ge=1, le=MAX_ID),
                model: str | None = Query(None, max_length=MAX_MODEL_CHARS),
                since: Instant | None = Query(None, description="ISO 8601, inclusive"),
                until: Instant | None = Query(None, description="ISO 8601, exclusive"),
                status: str | None = Query(
                    None, pattern=STATUS_PATTERN,
                    description="`succeeded` (below 400), `failed` (400 and above) or an HTTP "
                                "status")) -> UsageQuery:
    return UsageQuery(key_id=key, model=model, since=since, until=until, status=status)


UtcOffset = Query(0, ge=-MAX_UTC_OFFSET_MINUTES, le=MAX_UTC_OFFSET_MINUTES,
                  description="Minutes east of UTC where days begin (UTC+8: 480)")
