"""Server-sent events, as both streaming endpoints (chat completions, images) send them.

A stream waits a short head start before it commits to a 200: an error that comes within it
(validation, 401/402, a full queue) keeps its own status, because the SDKs check the status
before reading events. Once started, a stream with nothing to say sends an SSE comment now and
then, so proxies and clients see bytes and keep the connection open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

HEAD_START_SECONDS = 2.0
KEEPALIVE_SECONDS = 10.0
KEEPALIVE = ": keep-alive\n\n"


def sse_response(events: AsyncIterator[str]) -> StreamingResponse:
    # no-cache and X-Accel-Buffering: proxies (nginx) must pass each event on at once.
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
