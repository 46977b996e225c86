"""An OpenAI-compatible Images API on 127.0.0.1 that holds every request until the test
releases it, for tests of what happens while an upstream is working (admission, clients that
leave). Synchronise on `held` and `calls`, never on time."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image
from upstream_server import serve_app, wait_until

CONFIG = """
[models.relayed]
backend = "upstream"
[models.relayed.capabilities]
sizes = ["1024x1024"]
[models.relayed.pricing]
per_image = "0.01"
[[models.relayed.deployments]]
provider = "openai_images"
base_url = "{base_url}/v1"
upstream_model = "dall-e-2"
timeout_seconds = 120
"""
UNIT = 10_000  # micros per image of `relayed`


class HoldingUpstream:
    def __init__(self) -> None:
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 40, 90)).save(buf, "PNG")
        self.png = buf.getvalue()
        self.calls = 0
        """Requests received in all."""
        self.held = 0
        """Requests waiting for `release()` now."""
        self._release = threading.Event()
        self._lock = threading.Lock()
        self.app = FastAPI()
        self.app.post("/v1/images/generations")(self._generate)

    async def _generate(self, request: Request) -> JSONResponse:
        await request.body()
        with self._lock:
            self.calls += 1
            self.held += 1
            number = self.calls
        try:
            await asyncio.to_thread(self._release.wait, 120)
        finally:
            with self._lock:
                self.held -= 1
        return JSONResponse({"created": 1, "data": [{"b64_json": base64.b64encode(
            self.png).decode()}]}, headers={"x-request-id": f"upstream-{number}"})

    def release(self) -> None:
        """Answer every held request, and every later one at once."""
        self._release.set()

    async def until_held(self, count: int) -> None:
        """Wait (without blocking the event loop) until `count` requests are held."""
        await asyncio.to_thread(wait_until, lambda: self.held >= count, 60)


@contextmanager
def holding_upstream() -> Iterator[tuple[HoldingUpstream, str]]:
    """The upstream and the `[models.relayed]` config text pointing at it."""
    upstream = HoldingUpstream()
    with serve_app(upstream.app) as base_url:
        try:
            yield upstream, CONFIG.format(base_url=base_url)
        finally:
            upstream.release()  # no request of a failed test stays held
