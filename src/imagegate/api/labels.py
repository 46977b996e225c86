"""`POST /v1/labels/verify`: the AI-content labels an image file carries, read back (the same
report as `imagegate verify`), for any API key: operators and their customers answering a
regulator or a platform about an image."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.datastructures import UploadFile

from ..errors import InvalidRequest
from ..labels.errors import LabelError
from ..labels.inspect import inspect_file
from . import deps
from .errors import error_responses
from .middleware import BodyTooLarge

router = APIRouter(tags=["labels"], dependencies=[Depends(deps.caller)],
                   responses=error_responses(400, 401, 413))

FILE_PART = "file"


@router.post("/labels/verify", openapi_extra={"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": [FILE_PART], "properties": {
        FILE_PART: {"type": "string", "format": "binary"}}}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "image/webp": {"schema": {"type": "string", "format": "binary"}}}}})
async def verify(request: Request) -> dict[str, Any]:
    """The image is the body (Content-Type image/png, image/jpeg or image/webp) or the `file`
    part of a multipart form."""
    data = await _image_bytes(request)
    try:
        report = await asyncio.to_thread(inspect_file, data)
    except LabelError as exc:
        raise InvalidRequest(f"Not a PNG, JPEG or WebP file that can be read: {exc}",
                             param=FILE_PART, code="invalid_image") from None
    return {"object": "label_report", **report}


async def _image_bytes(request: Request) -> bytes:
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=10)
        except BodyTooLarge:
            raise
        except Exception as exc:  # a malformed multipart body: python-multipart's own errors
            detail = getattr(exc, "detail", None) or str(exc)
            raise InvalidRequest(f"The multipart body could not be read: {detail}",
                                 code="invalid_multipart") from None
        part = form.get(FILE_PART)
        if not isinstance(part, UploadFile):
            raise InvalidRequest(f"Send the image as the `{FILE_PART}` part.", param=FILE_PART)
        data = await part.read()
    else:
        data = await request.body()
    if not data:
        raise InvalidRequest("The request holds no image.", param=FILE_PART,
                             code="invalid_image")
    return data
