"""Every streamed answer (chat completions, image generations and edits, the Responses API) as
one kind of stream; an endpoint only says what its events hold (`StreamEvents`).

    head start   The generation starts at once, and the answer waits up to HEAD_START_SECONDS
                 for its first preview or its end before it commits to a 200. An error within
                 the head start keeps its own HTTP status (the SDKs check the status before
                 they read events); after it, an error is an event.
    keep-alive   A stream with nothing to say for KEEPALIVE_SECONDS sends an SSE comment, so
                 proxies and clients see bytes and keep the connection open; so does one that
                 commits with no opening events of its own.
    leaving      A client that leaves, during the head start or later, lets its generation go
                 as a non-streamed request's is let go (`ImageService.let_go`): work not yet
                 handed off stops, free; work an upstream took is finished, stored and charged.
                 Its usage row says 499 `client_disconnected` either way.
    framing      `event: NAME` when the endpoint names its events, then one `data:` line.

Previews come from the thread that runs the denoising loop; they cross to the event loop
through a queue, and the endpoint turns them into events off the loop (encoding is work).

sse-starlette would cover the part after the 200 (framing, pings, disconnects) but neither the
head start nor a client that leaves within it, so the whole of it lives here, in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from fastapi import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..errors import APIError, error_body
from ..generation import GenerationRequest, PartialImage, ProgressListener
from ..imaging import encode
from ..protocol.stream_events import ErrorObject
from . import deps

log = logging.getLogger(__name__)

HEAD_START_SECONDS = 2.0
KEEPALIVE_SECONDS = 10.0
KEEPALIVE = ": keep-alive\n\n"

ResultT = TypeVar("ResultT")
ResultT_contra = TypeVar("ResultT_contra", contravariant=True)


@dataclass(frozen=True)
class Event:
    """One server-sent event: a JSON payload (or a literal such as chat's `[DONE]`), named or
    not."""

    data: Mapping[str, Any] | str
    name: str | None = None

    def frame(self) -> str:
        data = self.data if isinstance(self.data, str) else json.dumps(self.data)
        head = f"event: {self.name}\n" if self.name is not None else ""
        return f"{head}data: {data}\n\n"


class StreamEvents(Protocol[ResultT_contra]):
    """What one endpoint's stream says; this module says when."""

    def opening(self) -> list[Event]:
        """Sent as soon as the stream commits to its 200 (before any preview)."""
        ...

    def preview(self, partial: PartialImage) -> list[Event]:
        """A preview of one image. Called off the event loop: it may encode."""
        ...

    def completed(self, result: ResultT_contra) -> list[Event]:
        """The end of a generation that succeeded."""
        ...

    def failed(self, error: ErrorObject) -> list[Event]:
        """The end of one that failed after the stream began (OpenAI's error object)."""
        ...


Generate = Callable[[ProgressListener], Awaitable[ResultT]]
"""Runs the generation, handing previews to the listener it is given."""


async def stream(request: Request, generate: Generate[ResultT], events: StreamEvents[ResultT],
                 *, partial_images: int = 0) -> StreamingResponse:
    """Start `generate` and answer with its event stream once the head start is over. Raises
    what the generation raised within the head start (rendered with its own status), and
    `ClientDisconnected` (499) when the client left within it."""
    let_go = deps.service(request).let_go
    job = _Job(generate, partial_images)
    first = await job.head_start(request, let_go)
    return _EventStream(job, _frames(job, first, events), let_go)


class _Ended:
    """Queued when the generation has ended, well or not."""


_ENDED = _Ended()
_Item = PartialImage | _Ended
"""What a stream's queue holds: previews, then the end."""


class _QueueListener(ProgressListener):
    """Hands previews from the worker thread to the stream's queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[_Item],
                 partial_images: int) -> None:
        self.partial_images = partial_images
        self._loop, self._queue = loop, queue

    def partial(self, partial: PartialImage) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
            self._loop.call_soon_threadsafe(self._queue.put_nowait, partial)


class _Job(Generic[ResultT]):
    """A running generation and the queue of what it has to say: previews, then the end."""

    def __init__(self, generate: Generate[ResultT], partial_images: int) -> None:
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        listener = _QueueListener(asyncio.get_running_loop(), self.queue, partial_images)
        self.task: asyncio.Future[ResultT] = asyncio.ensure_future(generate(listener))
        self.task.add_done_callback(lambda _: self.queue.put_nowait(_ENDED))

    async def head_start(self, request: Request,
                         let_go: Callable[[asyncio.Future[Any]], None]) -> _Item | None:
        """The first preview or the end if either comes within the head start, else None."""
        getter = asyncio.ensure_future(self.queue.get())
        watcher = asyncio.ensure_future(deps.wait_for_disconnect(request))
        try:
            await asyncio.wait({getter, watcher}, timeout=HEAD_START_SECONDS,
                               return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the request itself was cancelled (shutdown)
            getter.cancel()
            let_go(self.task)
            raise
        finally:
            watcher.cancel()
        if getter.done():
            first = getter.result()
            if isinstance(first, _Ended):
                self.task.result()  # (an error is rendered by the exception handlers)
            return first
        getter.cancel()
        if watcher.done() and not watcher.cancelled():
            let_go(self.task)
            raise deps.ClientDisconnected()
        return None

    async def next_item(self) -> _Item | None:
        """The next preview or the end; None when a keep-alive is due first."""
        try:
            return await asyncio.wait_for(self.queue.get(), KEEPALIVE_SECONDS)
        except asyncio.TimeoutError:
            return None


async def _frames(job: _Job[ResultT], first: _Item | None, events: StreamEvents[ResultT]
                  ) -> AsyncGenerator[str, None]:
    opening = events.opening()
    for event in opening:
        yield event.frame()
    if first is None and not opening:
        yield KEEPALIVE  # the 200 goes out now: the client sees its stream begin
    item = first
    while not isinstance(item, _Ended):
        if item is not None:
            for event in await asyncio.to_thread(events.preview, item):
                yield event.frame()
        item = await job.next_item()
        if item is None:
            yield KEEPALIVE
    try:
        result = job.task.result()
    except APIError as exc:
        error: ErrorObject = exc.body()["error"]
    except Exception:  # logged by the service; the client gets no internals
        log.exception("streamed generation failed")
        error = error_body("The server had an error while generating.", type="server_error",
                           code="internal_error")["error"]
    else:
        for event in events.completed(result):
            yield event.frame()
        return
    for event in events.failed(error):
        yield event.frame()


class _EventStream(StreamingResponse):
    """The stream once committed. It watches for the client leaving itself (whatever the
    ASGI server's spec version), and lets the generation go when the stream ends before it:
    a client that left, whether its events had begun to flow or not."""

    def __init__(self, job: _Job[Any], frames: AsyncGenerator[str, None],
                 let_go: Callable[[asyncio.Future[Any]], None]) -> None:
        # no-cache and X-Accel-Buffering: proxies (nginx) must pass each event on at once.
        super().__init__(frames, media_type="text/event-stream",
                         headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        self._job, self._frames, self._let_go = job, frames, let_go

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sending = asyncio.ensure_future(self.stream_response(send))
        leaving = asyncio.ensure_future(_client_left(receive))
        done: set[asyncio.Future[None]] = set()
        try:
            done, _ = await asyncio.wait({sending, leaving}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sending, leaving):
                task.cancel()
            await asyncio.wait({sending, leaving})
            await self._frames.aclose()
            if not self._job.task.done():
                self._let_go(self._job.task)
        failure = sending.exception() if sending in done else None
        if failure is not None and not isinstance(failure, OSError):  # OSError: the client left
            raise failure


async def _client_left(receive: Receive) -> None:
    # The body has been read, so the next ASGI message can only be the disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass


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
