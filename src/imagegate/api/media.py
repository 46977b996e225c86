"""`GET /v1/media/{name}`: serve a stored image behind its signed, expiring link; and
`public_link`, how every endpoint turns a stored image's link into the URL it answers with."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response, StreamingResponse

from ..service import ImageService
from . import deps

router = APIRouter(tags=["media"])


def public_link(base_url: str, link: str) -> str:
    """The URL an answer carries: a /v1/media path on this server's public URL, or as it is a
    link that is already absolute (an object store's presigned URL)."""
    return link if link.startswith(("https://", "http://")) else base_url + link


@router.api_route("/v1/media/{name}", methods=["GET", "HEAD"], include_in_schema=False)
async def get_media(name: str, request: Request,
                    service: ImageService = Depends(deps.service)) -> Response:
    # 404 for malformed or unknown names, before anything else; nothing is read yet
    image = await asyncio.to_thread(service.store.open, name)
    expires = request.query_params.get("expires")
    service.signer.verify(name, expires, request.query_params.get("sig"))  # 403
    max_age = max(0, int(expires or 0) - int(time.time()))
    headers = {"cache-control": f"private, max-age={max_age}"}
    if image.path is not None:  # on this host's disk: let Starlette send the file
        return FileResponse(image.path, media_type=image.media_type, headers=headers)
    headers["content-length"] = str(image.size)
    if request.method == "HEAD":
        return Response(media_type=image.media_type, headers=headers)
    return StreamingResponse(image.chunks, media_type=image.media_type, headers=headers)
