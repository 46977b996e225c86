"""`stream: true` on `/v1/images/generations` and `/v1/images/edits`: OpenAI's image event stream.

    event: image_generation.partial_image      previews (of the latents, or an upstream's own),
                                               `partial_images` per image
    data: {"type": ..., "b64_json": ..., "partial_image_index": 0, ...}

    event: image_generation.completed          one per image, with the request's usage
    data: {"type": ..., "b64_json": ..., "usage": {...}, ...}

(`image_edit.*` for edits.) The request runs the same path as any other, with a progress listener
that the engine calls from its worker thread; previews cross to the event loop through a queue
and are scaled and encoded off the loop.

The HTTP status is chosen as late as is useful: an error that comes before the first event or
within a short head start (validation, 401/402, a full queue's 429) is an ordinary JSON error
response, because the SDKs check the status before reading events. After the 200 has gone out,
an error is an `error` event, which the SDKs raise as `APIError`. A client that leaves cancels
its generation: a local one stops and is not charged; one already sent to an upstream is
finished, stored and charged (service.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..accounts.keys import Caller
from ..errors import APIError, InvalidRequest, error_body
from ..generation import GenerationRequest, GenerationResult, PartialImage
from ..service import ImageService
from . import deps, previews
from .sse import KEEPALIVE, sse_response

log = logging.getLogger(__name__)

MAX_PARTIAL_IMAGES = 3  # OpenAI's limit


def check_partial_images(value: int | None) -> int:
    if value is None:
        return 0
    if not 0 <= value <= MAX_PARTIAL_IMAGES:
        raise InvalidRequest(f"`partial_images` must be between 0 and {MAX_PARTIAL_IMAGES}.",
                             param="partial_images", code="invalid_value")
    return value


async def stream_images(request: Request, service: ImageService, caller: Caller,
                        gen: GenerationRequest, *, endpoint: str, event_prefix: str,
                        partial_images: int) -> StreamingResponse:
    queue, task, first = await previews.start(request, lambda listener: service.generate(
        gen, request_id=deps.request_id(request), caller=caller, endpoint=endpoint,
        progress=listener), partial_images)
    stream = _Stream(gen, event_prefix, deps.public_base_url(request), service.let_go,
                     _resolved_looks(service, gen))
    return sse_response(stream.events(first, queue, task))


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


class _Stream:
    def __init__(self, gen: GenerationRequest, event_prefix: str, base_url: str,
                 let_go: Callable[[asyncio.Future], None], looks: tuple[str, str]) -> None:
        self.gen = gen
        self.quality, self.background = looks
        self.let_go = let_go
        self.prefix = event_prefix
        self.base_url = base_url
        self.created = int(time.time())

    async def events(self, first: Any, queue: asyncio.Queue, task: asyncio.Future
                     ) -> AsyncIterator[str]:
        item = first
        try:
            while item is not previews.DONE:
                if item is None:
                    yield KEEPALIVE
                else:
                    yield await asyncio.to_thread(self._partial_event, item)
                item = await previews.next_item(queue)
            try:
                result = task.result()
            except APIError as exc:
                yield _sse("error", exc.body())
                return
            except Exception:  # logged by the service; the client gets no internals
                log.exception("streamed generation failed")
                yield _sse("error", error_body("The server had an error while generating.",
                                               type="server_error", code="internal_error"))
                return
            for index, image in enumerate(result.images):
                yield self._completed_event(result, index, image)
        finally:
            if not task.done():  # the client went away (service.py decides the money)
                self.let_go(task)

    def _partial_event(self, partial: PartialImage) -> str:
        data = previews.preview_bytes(partial, self.gen)
        payload: dict[str, Any] = {
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
            payload.update(step=partial.step, total_steps=partial.total_steps)
        return _sse(payload["type"], payload)

    def _completed_event(self, result: GenerationResult, index: int, image: Any) -> str:
        tokens = result.prompt_tokens
        payload: dict[str, Any] = {
            "type": f"{self.prefix}.completed",
            "b64_json": base64.b64encode(image.data).decode("ascii"),
            "created_at": self.created,
            "size": str(result.size),
            "quality": result.quality or "auto",
            "background": result.background,
            "output_format": result.output_format,
            # The request's usage, the same on each image's event.
            "usage": {"total_tokens": tokens, "input_tokens": tokens, "output_tokens": 0,
                      "input_tokens_details": {"text_tokens": tokens, "image_tokens": 0}},
            "image_index": index,
            "seed": image.seed,
            "revised_prompt": result.revised_prompt,
        }
        if image.url is not None:  # response_format=url: the hosted link as well
            payload.update(url=self.base_url + image.url, expires_at=image.expires_at)
        return _sse(payload["type"], payload)


def _sse(event: str, payload: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(payload)}\n\n"
