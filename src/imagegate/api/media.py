"""`GET /v1/media/{name}`: serve a stored image behind its signed, expiring link."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse

from ..errors import NotFound
from ..service import ImageService
from . import deps

router = APIRouter(tags=["media"])


@router.api_route("/v1/media/{name}", methods=["GET", "HEAD"], include_in_schema=False)
async def get_media(name: str, request: Request,
                    service: ImageService = Depends(deps.service)) -> FileResponse:
    stored = service.store.get(name)  # 404 for malformed or unknown names, before anything else
    if not stored.is_image:  # the store also keeps replayable responses; those are not served
        raise NotFound("No such image.")
    expires = request.query_params.get("expires")
    service.signer.verify(name, expires, request.query_params.get("sig"))  # 403
    max_age = max(0, int(expires or 0) - int(time.time()))
    return FileResponse(stored.path, media_type=stored.media_type,
                        headers={"cache-control": f"private, max-age={max_age}"})
