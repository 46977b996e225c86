"""Server-sent events as an upstream streams them (OpenAI's image streams): parsed from the
body's chunks as they arrive, so a preview reaches the client before the stream ends."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator


async def server_sent_events(chunks: AsyncIterable[bytes]) -> AsyncIterator[tuple[str, str]]:
    """(event name, data) per event: `:` comments (keep-alives) are skipped, several `data:`
    lines are joined with newlines, a blank line ends an event (one cut off by the end of the
    stream is dropped, as the SDKs do), an event without a name is "message". Bounds on what is
    read are the caller's, on `chunks`."""
    buffer = bytearray()
    event, data = "", list[str]()
    async for chunk in chunks:
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end]).rstrip(b"\r").decode("utf-8", "replace")
            del buffer[: end + 1]
            if not line:
                if data:
                    yield event or "message", "\n".join(data)
                event, data = "", []
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
