"""A generation whose previews are streamed: what the image streams and the Responses stream
share. The worker thread's previews go through a queue to the stream; the stream commits to a
200 only after a head start (api/sse.py) in which an early error keeps its own status; previews
are scaled to the final size and encoded as the client asked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request

from ..generation import GenerationRequest, PartialImage, ProgressListener
from ..imaging import encode
from . import deps
from .sse import HEAD_START_SECONDS, KEEPALIVE_SECONDS

DONE = object()
"""Queued when the generation has finished, well or not."""


class _QueueListener(ProgressListener):
    """Hands previews from the worker thread to the stream's queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue,
                 partial_images: int) -> None:
        self.partial_images = partial_images
        self._loop, self._queue = loop, queue

    def partial(self, partial: PartialImage) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
            self._loop.call_soon_threadsafe(self._queue.put_nowait, partial)


async def start(request: Request, generate: Callable[[ProgressListener], Awaitable[Any]],
                partial_images: int) -> tuple[asyncio.Queue, asyncio.Future, Any]:
    """Start `generate(listener)` and wait out the head start: returns the queue, the task and
    the first item (a preview, DONE, or None when the head start ran out first). A failure
    within the head start is raised here, so it keeps its own HTTP status; a client that leaves
    meanwhile lets the generation go (service.py decides the money)."""
    queue: asyncio.Queue = asyncio.Queue()
    task = asyncio.ensure_future(generate(
        _QueueListener(asyncio.get_running_loop(), queue, partial_images)))
    task.add_done_callback(lambda _: queue.put_nowait(DONE))
    getter = asyncio.ensure_future(queue.get())
    watcher = asyncio.ensure_future(deps.wait_for_disconnect(request))
    try:
        await asyncio.wait({getter, watcher}, timeout=HEAD_START_SECONDS,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if getter.done():
        first = getter.result()
        if first is DONE:
            task.result()  # (an error is rendered by the exception handlers)
        return queue, task, first
    getter.cancel()
    if watcher.done() and not watcher.cancelled():
        deps.service(request).let_go(task)
        raise deps.ClientDisconnected()
    return queue, task, None


async def next_item(queue: asyncio.Queue) -> Any:
    """The next preview or DONE; None when a keep-alive is due first."""
    try:
        return await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
    except asyncio.TimeoutError:
        return None


def preview_bytes(partial: PartialImage, gen: GenerationRequest) -> bytes:
    """A preview scaled to the final size and encoded as the request asks; an upstream's own
    preview passes as it is when it already is that."""
    from PIL import Image

    size = (partial.width, partial.height)
    if (partial.data is not None and partial.format == gen.output_format
            and partial.image.size == size and gen.output_compression is None):
        return partial.data
    image = partial.image.resize(size, Image.Resampling.BILINEAR)
    return encode(image, gen.output_format, gen.output_compression)
