"""`POST /v1/images/generations`: OpenAI Images API in, the shared path, OpenAI Images API out."""

from __future__ import annotations

from typing import Any

import pybase64
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from .. import rules
from ..accounts.keys import Caller
from ..errors import InvalidRequest, ModelNotFound
from ..generation import GenerationRequest, GenerationResult, ResponseFormat, Size
from ..protocol.images import (
    ImageData,
    ImageGenerationRequest,
    ImageRequestFields,
    ImagesResponse,
    ImagesUsage,
    InputTokensDetails,
)
from ..service import ImageService
from . import deps
from .errors import EVENT_STREAM, GENERATION_STATUSES, error_responses
from .fast_json import FastJSONResponse
from .image_stream import stream_images
from .media import public_link

router = APIRouter(tags=["images"])


@router.post("/images/generations", response_model=ImagesResponse,
             response_model_exclude_none=True,
             responses={**EVENT_STREAM, **error_responses(*GENERATION_STATUSES)})
async def create_image(
    body: ImageGenerationRequest,
    request: Request,
    caller: Caller = Depends(deps.caller),
    service: ImageService = Depends(deps.service),
) -> Response:
    settings = deps.settings(request)
    gen = to_generation_request(service, body, default_model=settings.api.default_model,
                                server_format=settings.api.images_response_format)
    gen.style = body.style
    check_n(service, gen)
    if body.stream:
        return await stream_images(request, service, caller, gen, endpoint="images.generations",
                                   event_prefix="image_generation",
                                   partial_images=body.partial_images or 0)

    async def produce() -> dict[str, Any]:
        result = await service.generate(gen, request_id=deps.request_id(request), caller=caller)
        answer = to_images_response(result, deps.public_base_url(request))
        return answer.model_dump(exclude_none=True)

    return FastJSONResponse(await deps.once_per_idempotency_key(request, caller, produce))


def check_n(service: ImageService, gen: GenerationRequest) -> None:
    """`n` against the model's own maximum at the wire, before the service records the request
    (an unknown model is the service's 404 to give)."""
    try:
        spec = service.catalog.get(gen.model)
    except ModelNotFound:
        return
    rules.check_n(spec, gen)


def response_format(service: ImageService, model: str, fields: ImageRequestFields,
                    server_format: ResponseFormat) -> ResponseFormat:
    """The `response_format` an Images request gets, decided here for every endpoint
    (docs/api.md, "Defaults"): the one it sends; else `url` for a stream (whose events carry
    base64 always, and the link beside it); else the model's catalog entry; else
    `server_format`, the server's setting for the endpoint (`images_response_format`,
    `edits_response_format`)."""
    if fields.response_format is not None:
        return fields.response_format
    if fields.stream:
        return "url"
    try:
        spec = service.catalog.get(model)
    except ModelNotFound:
        return server_format  # the service gives the 404
    return spec.response_format(server_format)


def parse_size(value: str | None, param: str = "size") -> Size | None:
    """'auto' and null mean the model's default; anything else must be WIDTHxHEIGHT."""
    if value is None or value == "auto":
        return None
    size = Size.parse(value)
    if size is None:
        raise InvalidRequest(
            f"Invalid size {value!r}: expected WIDTHxHEIGHT such as 1024x1024, or auto.",
            param=param, code="invalid_size")
    return size


def to_generation_request(service: ImageService, fields: ImageRequestFields, *,
                          default_model: str, server_format: ResponseFormat
                          ) -> GenerationRequest:
    """The fields every Images endpoint shares, translated once; an endpoint adds its own (a
    generation's `style`, an edit's images and `strength`). `server_format`: the server's
    `response_format` setting for the endpoint."""
    model = fields.model or default_model
    return GenerationRequest(
        model=model,
        prompt=fields.prompt or "",
        n=1 if fields.n is None else fields.n,
        size=parse_size(fields.size),
        quality=fields.quality,
        response_format=response_format(service, model, fields, server_format),
        output_format=fields.output_format or "png",
        output_compression=fields.output_compression,
        background=fields.background,
        user=fields.user,
        seed=fields.seed,
        num_inference_steps=fields.num_inference_steps,
        guidance_scale=fields.guidance_scale,
        negative_prompt=fields.negative_prompt,
        ai_mark=fields.ai_mark,
    )


def to_images_response(result: GenerationResult, base_url: str) -> ImagesResponse:
    data = []
    for image in result.images:
        item = ImageData(revised_prompt=result.revised_prompt, seed=image.seed)
        if result.response_format == "url":
            item.url = public_link(base_url, image.url or "")
            item.expires_at = image.expires_at
        else:
            item.b64_json = pybase64.b64encode_as_string(image.data)
        data.append(item)
    tokens = result.prompt_tokens
    return ImagesResponse(
        created=result.created,
        data=data,
        size=str(result.size),
        quality=result.quality,
        output_format=result.output_format,
        background=result.background,
        usage=ImagesUsage(
            prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens,
            input_tokens=tokens, output_tokens=0,
            input_tokens_details=InputTokensDetails(text_tokens=tokens),
        ),
    )
