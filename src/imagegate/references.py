"""Reference images from clients (uploads, data URLs and http(s) URLs): fetched safely
(`net.safe_fetch`, SSRF-checked and capped), then decoded within pixel bounds
(`imaging.decoding`).

The input-image settings (`[fetch]`, settings.py's `FetchPolicy`); one `ReferenceLoader` per server
applies it. Decoding runs in a worker thread so the event loop never stalls on a large image,
and the pixels being decoded across the whole server are capped (`max_pixels_in_flight`).
"""

from __future__ import annotations

import asyncio

import httpx

from .imaging.decoding import DecodedImage, PixelBudget, decode_image
from .net.safe_fetch import Resolver, SafeFetcher
from .settings import FetchPolicy

__all__ = ["FetchPolicy", "ReferenceLoader"]

class ReferenceLoader:
    """Turns what a client sent for a reference image into a `DecodedImage`.

    One per server: it holds the fetcher's HTTP client and the server's pixel budget.
    `resolver` and `transport` exist for tests; in production both default to the system's.
    """

    def __init__(self, policy: FetchPolicy, *, resolver: Resolver | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.policy = policy
        limit = policy.max_pixels_in_flight
        self.budget = PixelBudget(None if limit is None else max(limit, policy.max_pixels))
        self._fetcher = SafeFetcher(
            max_bytes=policy.max_bytes, timeout_seconds=policy.timeout_seconds,
            max_redirects=policy.max_redirects, allow_private=policy.allow_private,
            allowed_hosts=policy.allowed_hosts, resolver=resolver, transport=transport)

    async def aclose(self) -> None:
        await self._fetcher.aclose()

    async def load(self, source: str | bytes, *, param: str,
                   max_edge: int | None = None) -> DecodedImage:
        """The image, decoded within the pixel budget and, with `max_edge`, reduced so that
        its longer edge is at most that (the model's working size)."""
        data = await self._fetcher.read(source, param=param)
        return await asyncio.to_thread(
            decode_image, data, param=param, max_pixels=self.policy.max_pixels,
            max_edge=max_edge, budget=self.budget)
