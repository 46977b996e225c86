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
from ..generation import GenerationRequest
from ..protocol import edit_form
from ..protocol.images import ImageEditFields, ImageEditJSON, ImagesResponse
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
from .image_stream import check_partial_images, stream_images
from .images import check_n, default_response_format, parse_size, to_images_response
from .middleware import BodyTooLarge

router = APIRouter(tags=["images"])
ModelT = TypeVar("ModelT", bound=BaseModel)

MAX_IMAGES = MAX_INPUT_IMAGES
VARIATION_STRENGTH = 0.75  # a variation keeps the composition and changes the details


def _request_body(json_allowed: bool) -> dict[str, Any]:
    """What the handlers parse themselves, for the OpenAPI document: multipart (the SDKs'
    form) and, for edits, OpenAI's JSON form."""
    content: dict[str, Any] = {"multipart/form-data": {"schema": edit_form.form_schema()}}
    if json_allowed:
        content["application/json"] = {"schema": {"$ref": "#/components/schemas/ImageEditJSON"}}
    return {"requestBody": {"required": True, "content": content}}


document_models(ImageEditJSON)


@router.post("/images/edits", response_model=ImagesResponse, openapi_extra=_request_body(True),
             responses={**EVENT_STREAM, **error_responses(*GENERATION_STATUSES)})
async def create_edit(request: Request, caller: Caller = Depends(deps.caller),
                      service: ImageService = Depends(deps.service)) -> Response:
    fields, images, mask = await _read_inputs(request, json_allowed=True)
    if not fields.prompt:
        raise InvalidRequest("Missing required parameter: 'prompt'.", param="prompt",
                             code="missing_required_parameter")
    gen = _generation_request(request, fields, images, mask, prompt=fields.prompt)
    check_n(service, gen)
    if fields.response_format is None and not fields.stream:
        gen.response_format = default_response_format(
            service, gen.model, deps.settings(request).edits_response_format)
    partial_images = check_partial_images(fields.partial_images)
    if fields.stream:
        return await stream_images(request, service, caller, gen, endpoint="images.edits",
                                   event_prefix="image_edit", partial_images=partial_images)
    return await _respond(request, caller, service, gen, "images.edits")


@router.post("/images/variations", response_model=ImagesResponse,
             openapi_extra=_request_body(False),
             responses=error_responses(*GENERATION_STATUSES))
async def create_variation(request: Request, caller: Caller = Depends(deps.caller),
                           service: ImageService = Depends(deps.service)) -> JSONResponse:
    fields, images, mask = await _read_inputs(request, json_allowed=False)
    if fields.stream:
        raise InvalidRequest("Variations are not streamed; leave out `stream`.",
                             param="stream", code="unsupported_parameter")
    if len(images) != 1:
        raise InvalidRequest("A variation takes exactly one image.", param="image")
    if mask is not None:
        raise InvalidRequest("Variations take no mask.", param="mask")
    gen = _generation_request(request, fields, images, None, prompt=fields.prompt or "")
    gen.prompt_optional = True
    check_n(service, gen)
    if fields.response_format is None:  # DALL-E 2's endpoint, and its default: links
        gen.response_format = default_response_format(
            service, gen.model, deps.settings(request).images_response_format)
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

    return JSONResponse(await deps.once_per_idempotency_key(request, caller, produce))


def _generation_request(request: Request, fields: ImageEditFields,
                        images: list[tuple[str | bytes, str]],
                        mask: tuple[str | bytes, str] | None, *, prompt: str
                        ) -> GenerationRequest:
    for name, value, allowed in (("response_format", fields.response_format, ("url", "b64_json")),
                                 ("output_format", fields.output_format,
                                  ("png", "jpeg", "webp"))):
        if value is not None and value not in allowed:
            raise InvalidRequest(f"Invalid `{name}` {value!r}; supported values are "
                                 f"{list(allowed)}.", param=name)
    if not images:
        raise InvalidRequest("Missing required parameter: 'image'.", param="image",
                             code="missing_required_parameter")
    if len(images) > MAX_IMAGES:
        raise InvalidRequest(f"At most {MAX_IMAGES} images may be sent.",
                             param=rules.images_field(images[-1][1]))
    return GenerationRequest(
        model=fields.model or deps.settings(request).default_model,
        prompt=prompt,
        n=1 if fields.n is None else fields.n,
        size=parse_size(fields.size),
        quality=fields.quality,
        response_format=fields.response_format or "url",  # type: ignore[arg-type]
        output_format=fields.output_format or "png",  # type: ignore[arg-type]
        output_compression=fields.output_compression,
        background=fields.background,
        user=fields.user,
        seed=fields.seed,
        num_inference_steps=fields.num_inference_steps,
        guidance_scale=fields.guidance_scale,
        negative_prompt=fields.negative_prompt,
        strength=fields.strength,
        references=images,
        mask=mask,
    )


async def _read_inputs(request: Request, *, json_allowed: bool
                       ) -> tuple[ImageEditFields, list[tuple[str | bytes, str]],
                                  tuple[str | bytes, str] | None]:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        return await _read_multipart(request)
    if json_allowed and media_type == "application/json":
        return await _read_json(request)
    expected = "multipart/form-data" + (" or application/json" if json_allowed else "")
    raise InvalidRequest(f"Unsupported content type {media_type or 'none'!r}: send "
                         f"{expected}.", code="unsupported_content_type")


async def _read_multipart(request: Request) -> tuple[ImageEditFields, list, Any]:
    try:
        form = await request.form(max_files=MAX_IMAGES + 1, max_fields=64)
    except BodyTooLarge:
        raise
    except Exception as exc:  # a malformed multipart body: python-multipart's own errors
        detail = getattr(exc, "detail", None) or str(exc)
        raise InvalidRequest(f"The multipart body could not be read: {detail}",
                             code="invalid_multipart") from None
    images: list[tuple[str | bytes, str]] = []
    for name in edit_form.IMAGE_PARTS:
        for i, part in enumerate(form.getlist(name)):
            where = name if name == "image" else f"image[{i}]"
            images.append((await _part_bytes(part, where), where))
    mask = None
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
    return _validate(ImageEditFields, edit_form.form_values(text)), images, mask


async def _part_bytes(part: Any, where: str) -> str | bytes:
    if isinstance(part, UploadFile):
        return await part.read()
    if isinstance(part, str) and part.startswith(("data:", "http://", "https://")):
        return part  # a URL sent as a text field: loaded like any other reference
    raise InvalidRequest(f"`{where}` must be a file.", param=where)


async def _read_json(request: Request) -> tuple[ImageEditFields, list, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise InvalidRequest("We could not parse the JSON body of your request.",
                             code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    parsed = _validate(ImageEditJSON, body)
    images = []
    for i, item in enumerate(parsed.images or []):
        if item.image_url is None:
            raise InvalidRequest("Each image needs an `image_url` (file ids are not "
                                 "supported).", param=f"images[{i}].image_url")
        images.append((item.image_url, f"images[{i}].image_url"))
    mask = None
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
