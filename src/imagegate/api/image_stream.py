"""`stream: true` on `/v1/images/generations` and `/v1/images/edits`: OpenAI's image event stream.

    event: image_generation.partial_image      previews (of the latents, or an upstream's own),
                                               `partial_images` per image
    data: {"type": ..., "b64_json": ..., "partial_image_index": 0, ...}

    event: image_generation.completed          one per image, with the request's usage
    data: {"type": ..., "b64_json": ..., "usage": {...}, ...}

(`image_edit.*` for edits.) The request runs the same path as any other, with a progress listener
that the engine calls from its worker thread. When the status is chosen, keep-alives and a
client that leaves are api/streaming.py's: after the 200 has gone out an error is an `error`
event, which the SDKs raise as `APIError`.
"""

from __future__ import annotations

import base64
import time

from fastapi import Request
from fastapi.responses import Response

from ..accounts.keys import Caller
from ..errors import APIError
from ..generation import DeliveredImage, GenerationRequest, GenerationResult, PartialImage
from ..protocol.stream_events import (
    CompletedImageEvent,
    ErrorObject,
    ImageInputTokensDetails,
    ImageStreamUsage,
    PartialImageEvent,
)
from ..service import ImageService
from . import deps, streaming
from .media import public_link
from .streaming import Event


async def stream_images(request: Request, service: ImageService, caller: Caller,
                        gen: GenerationRequest, *, endpoint: str, event_prefix: str,
                        partial_images: int) -> Response:
    events = _ImageEvents(gen, event_prefix, deps.public_base_url(request),
                          _resolved_looks(service, gen))
    return await streaming.stream(request, lambda listener: service.generate(
        gen, request_id=deps.request_id(request), caller=caller, endpoint=endpoint,
        progress=listener), events, partial_images=partial_images)


def _resolved_looks(service: ImageService, gen: GenerationRequest) -> tuple[str, str]:
    """The quality and background the request resolves to (rules.resolve: `auto` and none
    are the model's default quality and an opaque background), for the previews, which come
    before the result that says them: every event of a request says the same values."""
    quality = gen.quality
    if quality in (None, "auto"):
        try:
            quality = service.catalog.get(gen.model).capabilities.default_quality
        except APIError:
            quality = None  # (a stream of an unknown model never sends a preview)
    background = "opaque" if gen.background in (None, "auto") else gen.background
    return quality or "auto", background


class _ImageEvents:
    """The image stream's events: previews, then one completed event per image."""

    def __init__(self, gen: GenerationRequest, event_prefix: str, base_url: str,
                 looks: tuple[str, str]) -> None:
        self.gen = gen
        self.quality, self.background = looks
        self.prefix = event_prefix
        self.base_url = base_url
        self.created = int(time.time())

    def opening(self) -> list[Event]:
        return []

    def preview(self, partial: PartialImage) -> list[Event]:
        data = streaming.preview_bytes(partial, self.gen)
        payload: PartialImageEvent = {
            "type": f"{self.prefix}.partial_image",
            "b64_json": base64.b64encode(data).decode("ascii"),
            "created_at": self.created,
            "size": f"{partial.width}x{partial.height}",
            "quality": self.quality,
            "background": self.background,
            "output_format": self.gen.output_format,
            "partial_image_index": partial.partial_index,
            # Extensions: which image (when n > 1) and how far its denoising had got (local
            # models only: an upstream's previews don't say).
            "image_index": partial.image_index,
        }
        if partial.step is not None:
            payload["step"], payload["total_steps"] = partial.step, partial.total_steps
        return [Event(payload, payload["type"])]

    def completed(self, result: GenerationResult) -> list[Event]:
        return [self._completed(result, index, image)
                for index, image in enumerate(result.images)]

    def _completed(self, result: GenerationResult, index: int, image: DeliveredImage) -> Event:
        tokens = result.prompt_tokens
        usage = ImageStreamUsage(  # the request's usage, the same on each image's event
            total_tokens=tokens, input_tokens=tokens, output_tokens=0,
            input_tokens_details=ImageInputTokensDetails(text_tokens=tokens, image_tokens=0))
        payload: CompletedImageEvent = {
            "type": f"{self.prefix}.completed",
            "b64_json": base64.b64encode(image.data).decode("ascii"),
            "created_at": self.created,
            "size": str(result.size),
            "quality": result.quality or "auto",
            "background": result.background,
            "output_format": result.output_format,
            "usage": usage,
            "image_index": index,
            "seed": image.seed,
            "revised_prompt": result.revised_prompt,
        }
        if image.url is not None:  # response_format=url: the hosted link as well
            payload["url"] = public_link(self.base_url, image.url)
            payload["expires_at"] = image.expires_at
        return Event(payload, payload["type"])

    def failed(self, error: ErrorObject) -> list[Event]:
        return [Event({"error": error}, "error")]
