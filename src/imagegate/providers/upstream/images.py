"""Images to and from upstreams.

To: input images and masks are re-encoded as PNG (`png_bytes`, `png_base64`), in a mode every
upstream reads.

From: an upstream's base64 or bytes are checked to be a readable image (`image_from_base64`,
`image_from_bytes`), and its links are downloaded (`image_from_url`) through the router's one
`ImageDownloader`. Memory stays small: base64 is decoded straight into the bytes that are kept
(adapters drop its text as soon as it is decoded), and an image's pixels are decoded only to
check it, then dropped: what travels on is the upstream's encoded bytes, decoded again only if
they must be re-encoded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
from typing import TYPE_CHECKING, Any

import httpx
from PIL import Image, UnidentifiedImageError

from ...errors import APIError
from ...generation import GeneratedImage
from ...imaging.decoding import decode_image
from ...net.safe_fetch import Resolver, SafeFetcher

if TYPE_CHECKING:
    from .call import UpstreamCall


# --- to upstreams -------------------------------------------------------------------------------


def png_bytes(image: Image.Image, mode: str | None = None) -> bytes:
    """`image` as PNG, converted to `mode`, or else to a mode PNG readers all take (RGB(A),
    L(A))."""
    if mode and image.mode != mode:
        image = image.convert(mode)
    elif image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if "A" in image.getbands() or
                              "transparency" in image.info else "RGB")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def png_base64(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")


# --- from upstreams -----------------------------------------------------------------------------


class ImageDownloader:
    """Upstream image links, fetched with the same guard against internal addresses as
    client-sent URLs, and decoded. One for the router's life (one HTTP client), not one per
    image; each download names the deployment's own host, the only one that may be private
    (another imagegate on the same network, say), and its deadline."""

    def __init__(self, max_bytes: int, *, resolver: Resolver | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._fetcher = SafeFetcher(max_bytes=max_bytes, resolver=resolver, transport=transport)

    async def aclose(self) -> None:
        await self._fetcher.aclose()

    async def load(self, url: str, *, own_host: str, timeout_seconds: float) -> Image.Image:
        """The decoded image behind `url`; 400-style `APIError`s when it cannot be used."""
        data = await self._fetcher.read(url, param="upstream", also_allowed=frozenset({own_host}),
                                        timeout_seconds=timeout_seconds)
        decoded = await asyncio.to_thread(decode_image, data, param="upstream")
        return decoded.image


def image_from_base64(call: UpstreamCall, data: Any, where: str = "image") -> GeneratedImage:
    """Decode and check one base64 image. CPU-bound for large images: adapters call it
    through `asyncio.to_thread`, and drop their reference to `data` first."""
    if not isinstance(data, str) or not data:
        raise call.fail("bad_response", f"sent an empty {where}.")
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    if len(data) * 3 // 4 > call.max_image_bytes:
        raise call.fail("bad_response", "sent an image larger than allowed.")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise call.fail("bad_response", f"sent a {where} that is not valid base64.") from None
    del data  # (the caller's copy is its own to drop)
    return image_from_bytes(call, raw)


def image_from_bytes(call: UpstreamCall, raw: bytes) -> GeneratedImage:
    if len(raw) > call.max_image_bytes:
        raise call.fail("bad_response", "sent an image larger than allowed.")
    try:
        image = Image.open(io.BytesIO(raw))
        fmt = (image.format or "").lower()
        image.load()  # a truncated image fails here, not later in the encoder
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise call.fail("bad_response", "sent data that is not a readable image.") from None
    known = {"png": "png", "jpeg": "jpeg", "webp": "webp"}.get(fmt)
    if known is None:
        return GeneratedImage(image=image)  # re-encoded later: keep the pixels
    # Checked: keep the encoded bytes only. The image is opened again lazily (its header
    # now, its pixels only if it has to be re-encoded), so no decoded copy waits in memory.
    image.close()
    return GeneratedImage(image=Image.open(io.BytesIO(raw)), data=raw, format=known)


async def image_from_url(call: UpstreamCall, url: Any) -> GeneratedImage:
    """Download an upstream's image (its links expire; ours replace them), capped and guarded
    (`ImageDownloader`)."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise call.fail("bad_response", "sent an image link that is not a URL.")
    own_host = httpx.URL(call.deployment.base_url).host
    try:
        image = await call.downloader.load(url, own_host=own_host,
                                           timeout_seconds=call.deployment.timeout_seconds)
    except APIError as exc:
        raise call.fail("bad_response", "sent an image link that could not be used ("
                        f"{exc.code}).") from None
    return GeneratedImage(image=image)
