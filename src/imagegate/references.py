"""Reference images from clients (uploads, data URLs and http(s) URLs): fetched safely
(`net.safe_fetch`, SSRF-checked and capped), then decoded within pixel bounds
(`imaging.decoding`).

The input-image settings (`fetch_*`) make one `FetchPolicy`; one `ReferenceLoader` per server
applies it. Decoding runs in a worker thread so the event loop never stalls on a large image,
and the pixels being decoded across the whole server are capped (`max_pixels_in_flight`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from .imaging.decoding import DEFAULT_MAX_PIXELS, DecodedImage, PixelBudget, decode_image
from .net.safe_fetch import Resolver, SafeFetcher

__all__ = ["FetchPolicy", "ReferenceLoader"]

_MIB = 1024 * 1024


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 20 * _MIB  # per image, also for uploads and data URLs
    timeout_seconds: float = 15.0  # the whole fetch, redirects and DNS included
    max_redirects: int = 3
    max_pixels: int = DEFAULT_MAX_PIXELS  # width * height, checked before decoding
    # Pixels being decoded at once across every request using this policy; None: no cap. Never
    # below max_pixels (an image that is allowed alone must fit).
    max_pixels_in_flight: int | None = None
    allow_private: bool = False  # for operators whose images live on a trusted internal network
    # Host names (or IP addresses) always allowed, matched exactly, e.g. an internal CDN.
    allowed_hosts: frozenset[str] = frozenset()


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
