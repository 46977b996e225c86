"""`POST /v1/images/edits` and `POST /v1/images/variations`, as the OpenAI SDKs send them.

Multipart (protocol/edit_form.py: `image` or `image[]` parts, an optional `mask`, text fields
whose values are strings); edits also take OpenAI's JSON form (`images: [{"image_url": ...}]`).
Part names and content types are not trusted: the bytes are checked to be an image
(references.py). Both go through the same request path as generations; only the translation
differs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from .. import rules
from ..accounts.keys import Caller
from ..errors import InvalidRequest
from ..generation import GenerationRequest, ResponseFormat
from ..protocol import edit_form
from ..protocol.images import ImageEditFields, ImageEditJSON, ImageInputFields, ImagesResponse
from ..protocol.wire import MAX_INPUT_IMAGES
from ..service import ImageService
from . import deps
from .errors import (
    EVENT_STREAM,
    GENERATION_STATUSES,
    describe_validation_error,
    document_models,
    error_responses,
)
from .fast_json import FastJSONResponse
from .image_stream import stream_images
from .images import check_n, to_generation_request, to_images_response
from .middleware import BodyTooLarge

router = APIRouter(tags=["images"])
ModelT = TypeVar("ModelT", bound=BaseModel)
Source = tuple[str | bytes, str]
"""An input image (a file's bytes, or a URL) and the wire parameter it came from."""
Inputs = tuple[ImageInputFields, list[Source], Source | None]
"""What a request sends: its fields, its images and its mask."""

MAX_IMAGES = MAX_INPUT_IMAGES
VARIATION_STRENGTH = 0.75  # a variation keeps the composition and changes the details


def _request_body(fields: type[BaseModel], json_allowed: bool) -> dict[str, Any]:
    """What the handlers parse themselves, for the OpenAPI document: multipart (the SDKs'
    form) and, for edits, OpenAI's JSON form."""
    content: dict[str, Any] = {"multipart/form-data": {"schema": edit_form.form_schema(fields)}}
    if json_allowed:
        content["application/json"] = {"schema": {"$ref": "#/components/schemas/ImageEditJSON"}}
    return {"requestBody": {"required": True, "content": content}}


document_models(ImageEditJSON)


@router.post("/images/edits", response_model=ImagesResponse,
             openapi_extra=_request_body(ImageEditFields, True),
             responses={**EVENT_STREAM, **error_responses(*GENERATION_STATUSES)})
async def create_edit(request: Request, caller: Caller = Depends(deps.caller),
                      service: ImageService = Depends(deps.service)) -> Response:
    fields, images, mask = await _read_inputs(request, ImageEditFields, json_allowed=True)
    gen = _generation_request(request, service, fields, images, mask,
                              server_format=deps.settings(request).api.edits_response_format)
    check_n(service, gen)
    if fields.stream:
        return await stream_images(request, service, caller, gen, endpoint="images.edits",
                                   event_prefix="image_edit",
                                   partial_images=fields.partial_images or 0)
    return await _respond(request, caller, service, gen, "images.edits")


@router.post("/images/variations", response_model=ImagesResponse,
             openapi_extra=_request_body(ImageInputFields, False),
             responses=error_responses(*GENERATION_STATUSES))
async def create_variation(request: Request, caller: Caller = Depends(deps.caller),
                           service: ImageService = Depends(deps.service)) -> JSONResponse:
    fields, images, mask = await _read_inputs(request, ImageInputFields, json_allowed=False)
    if fields.stream:
        raise InvalidRequest("Variations are not streamed; leave out `stream`.",
                             param="stream", code="unsupported_parameter")
    if len(images) != 1:
        raise InvalidRequest("A variation takes exactly one image.", param="image")
    if mask is not None:
        raise InvalidRequest("Variations take no mask.", param="mask")
    # DALL-E 2's endpoint, and its default: links.
    gen = _generation_request(request, service, fields, images, None,
                              server_format=deps.settings(request).api.images_response_format)
    gen.prompt_optional = True
    check_n(service, gen)
    if gen.strength is None:
        gen.strength = VARIATION_STRENGTH
    return await _respond(request, caller, service, gen, "images.variations")


async def _respond(request: Request, caller: Caller, service: ImageService,
                   gen: GenerationRequest, endpoint: str) -> JSONResponse:
    async def produce() -> dict[str, Any]:
        result = await service.generate(gen, request_id=deps.request_id(request), caller=caller,
                                        endpoint=endpoint)
        return to_images_response(result, deps.public_base_url(request)).model_dump(
            exclude_none=True)

    return FastJSONResponse(await deps.once_per_idempotency_key(request, caller, produce))


def _generation_request(request: Request, service: ImageService, fields: ImageInputFields,
                        images: list[Source], mask: Source | None, *,
                        server_format: ResponseFormat) -> GenerationRequest:
    """The shared fields as a generation's (api/images.py), with the images and `strength`."""
    if not images:
        raise InvalidRequest("Missing required parameter: 'image'.", param="image",
                             code="missing_required_parameter")
    if len(images) > MAX_IMAGES:
        raise InvalidRequest(f"At most {MAX_IMAGES} images may be sent.",
                             param=rules.images_field(images[-1][1]))
    gen = to_generation_request(service, fields,
                                default_model=deps.settings(request).api.default_model,
                                server_format=server_format)
    gen.strength = fields.strength
    gen.references = images
    gen.mask = mask
    return gen


async def _read_inputs(request: Request, fields: type[ImageInputFields], *,
                       json_allowed: bool) -> Inputs:
    """A form's fields held to `fields` (an edit's or a variation's), or OpenAI's JSON edit
    form (`ImageEditJSON`), with the images and the mask."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        return await _read_multipart(request, fields)
    if json_allowed and media_type == "application/json":
        return await _read_json(request)
    expected = "multipart/form-data" + (" or application/json" if json_allowed else "")
    raise InvalidRequest(f"Unsupported content type {media_type or 'none'!r}: send "
                         f"{expected}.", code="unsupported_content_type")


async def _read_multipart(request: Request, fields: type[ImageInputFields]) -> Inputs:
    try:
        form = await request.form(max_files=MAX_IMAGES + 1, max_fields=64)
    except BodyTooLarge:
        raise
    except Exception as exc:  # a malformed multipart body: python-multipart's own errors
        detail = getattr(exc, "detail", None) or str(exc)
        raise InvalidRequest(f"The multipart body could not be read: {detail}",
                             code="invalid_multipart") from None
    images: list[Source] = []
    for name in edit_form.IMAGE_PARTS:
        for i, part in enumerate(form.getlist(name)):
            where = name if name == "image" else f"image[{i}]"
            images.append((await _part_bytes(part, where), where))
    mask: Source | None = None
    if form.get(edit_form.MASK_PART) is not None:
        mask = (await _part_bytes(form[edit_form.MASK_PART], "mask"), "mask")
    text = {k: v for k, v in form.multi_items() if isinstance(v, str) and v != ""}
    # What a retry must repeat to count as the same request: the fields and the files' bytes,
    # not the multipart framing (an SDK retry picks a new boundary).
    request.state.fingerprint = json.dumps({
        "fields": sorted(text.items()),
        "images": [hashlib.sha256(src if isinstance(src, bytes) else src.encode()).hexdigest()
                   for src, _ in images + ([mask] if mask else [])],
    }).encode()
    return _validate(fields, edit_form.form_values(text)), images, mask


async def _part_bytes(part: Any, where: str) -> str | bytes:
    if isinstance(part, UploadFile):
        return await part.read()
    if isinstance(part, str) and part.startswith(("data:", "http://", "https://")):
        return part  # a URL sent as a text field: loaded like any other reference
    raise InvalidRequest(f"`{where}` must be a file.", param=where)


async def _read_json(request: Request) -> Inputs:
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise InvalidRequest("We could not parse the JSON body of your request.",
                             code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    parsed = _validate(ImageEditJSON, body)
    images: list[Source] = []
    for i, item in enumerate(parsed.images or []):
        if item.image_url is None:
            raise InvalidRequest("Each image needs an `image_url` (file ids are not "
                                 "supported).", param=f"images[{i}].image_url")
        images.append((item.image_url, f"images[{i}].image_url"))
    mask: Source | None = None
    if parsed.mask is not None:
        if parsed.mask.image_url is None:
            raise InvalidRequest("The mask needs an `image_url` (file ids are not supported).",
                                 param="mask.image_url")
        mask = (parsed.mask.image_url, "mask.image_url")
    return parsed, images, mask


def _validate(model: type[ModelT], values: dict[str, Any]) -> ModelT:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        message, param, code = describe_validation_error(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()])
        raise InvalidRequest(message, param=param, code=code) from None
