"""Images to and from upstreams.

To: input images and masks are re-encoded as PNG (`png_bytes`, `png_base64`), in a mode every
upstream reads.

From: an upstream's base64 or bytes are checked to be a whole, readable image
(`image_from_base64`, `image_from_bytes`), and its links are downloaded (`image_from_url`)
through the router's one `ImageDownloader`. A relay should cost about what moving the bytes
costs, so no pixel is decoded to check a PNG or a JPEG: a PNG's chunks, CRCs and zlib stream
are checked without a pixel buffer, a JPEG is decoded at 1/8 scale (imaging/checking.py); other
formats are decoded in full. What travels on is the upstream's encoded bytes, with the image
opened lazily beside them (its header only), decoded only if something needs its pixels: a
change of format, the visible mark. Memory stays small: base64 is decoded straight into the
bytes that are kept, and adapters drop its text as soon as it is decoded.
"""

from __future__ import annotations

import asyncio
import binascii
import io
from typing import TYPE_CHECKING, Any

import httpx
import pybase64
from PIL import Image, UnidentifiedImageError

from ...errors import APIError
from ...generation import GeneratedImage
from ...imaging.checking import BrokenImage, check_jpeg, check_png, check_work
from ...imaging.decoding import DEFAULT_MAX_PIXELS, SUPPORTED_FORMATS
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
    return pybase64.b64encode_as_string(png_bytes(image))


# --- from upstreams -----------------------------------------------------------------------------


class ImageDownloader:
    """Upstream image links, fetched with the same guard against internal addresses as
    client-sent URLs. One for the router's life (one HTTP client), not one per image; each
    download names the deployment's own host, the only one that may be private (another
    imagegate on the same network, say), and its deadline."""

    def __init__(self, max_bytes: int, *, resolver: Resolver | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._fetcher = SafeFetcher(max_bytes=max_bytes, resolver=resolver, transport=transport)

    async def aclose(self) -> None:
        await self._fetcher.aclose()

    async def read(self, url: str, *, own_host: str, timeout_seconds: float) -> bytes:
        """The bytes behind `url`; 400-style `APIError`s when they cannot be fetched."""
        return await self._fetcher.read(url, param="upstream", also_allowed=frozenset({own_host}),
                                        timeout_seconds=timeout_seconds)


INLINE_WORK_BYTES = 1 << 20
"""An image whose check goes through at most this many bytes (`check_work`: about a millisecond
of work) is checked on the event loop, since handing it to a thread and back costs about as
much (half a millisecond each way, measured on the relay path); a larger one in a thread, where
zlib and libjpeg release the GIL and the loop goes on serving other requests."""


async def checked_base64(call: UpstreamCall, data: Any, where: str = "image"
                         ) -> GeneratedImage:
    """`image_from_base64`, on the event loop for a small image, else in a thread. Callers drop
    their own reference to `data` first (popped from the answer), so that the text goes as soon
    as it is decoded."""
    if _small_base64(data):
        return image_from_base64(call, data, where)
    return await asyncio.to_thread(image_from_base64, call, data, where)


async def checked_bytes(call: UpstreamCall, raw: bytes) -> GeneratedImage:
    """`image_from_bytes`, on the event loop for a small image, else in a thread."""
    if check_work(raw[:33], len(raw)) <= INLINE_WORK_BYTES:
        return image_from_bytes(call, raw)
    return await asyncio.to_thread(image_from_bytes, call, raw)


def _small_base64(data: Any) -> bool:
    """Whether the check of this base64 image is small work, judged from its length and its
    first 33 bytes (a PNG's header)."""
    if isinstance(data, bytes):
        start = 0  # lifted out of an answer as it was (lifting.py): no data URL
    elif isinstance(data, str):
        start = data.find(",", 0, 256) + 1 if data.startswith("data:") else 0
    else:
        return True  # refused at once
    size = (len(data) - start) * 3 // 4
    if size > INLINE_WORK_BYTES:
        return False
    try:
        head = pybase64.b64decode(data[start:start + 44], validate=True)
    except (binascii.Error, ValueError):
        return True  # too short, or not base64: refused at once
    return check_work(head, size) <= INLINE_WORK_BYTES


def image_from_base64(call: UpstreamCall, data: Any, where: str = "image") -> GeneratedImage:
    """Decode and check one base64 image (`checked_base64` says where to run it)."""
    if not isinstance(data, (str, bytes)) or not data:
        raise call.fail("bad_response", f"sent an empty {where}.")
    if isinstance(data, str) and data.startswith("data:"):
        data = data.split(",", 1)[-1]
    if len(data) * 3 // 4 > call.max_image_bytes:
        raise call.fail("bad_response", "sent an image larger than allowed.")
    try:
        raw = pybase64.b64decode(data, validate=True)  # SIMD: ~50x the stdlib's speed
    except (binascii.Error, ValueError):
        raise call.fail("bad_response", f"sent a {where} that is not valid base64.") from None
    del data  # (the caller's copy is its own to drop)
    return image_from_bytes(call, raw)


PASSED_ON = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
"""PIL's format -> the output format whose requests the upstream's bytes can serve as they are."""


def image_from_bytes(call: UpstreamCall, raw: bytes) -> GeneratedImage:
    """`raw` checked whole and kept as it is, with a lazily opened image beside it; refused
    (bad_response) when it is not a whole image of a format that models make."""
    if len(raw) > call.max_image_bytes:
        raise call.fail("bad_response", "sent an image larger than allowed.")
    try:
        # The header only; the decoders are those of client uploads (decoding.py says why).
        image = Image.open(io.BytesIO(raw), formats=SUPPORTED_FORMATS)
        if image.width * image.height > DEFAULT_MAX_PIXELS:
            raise call.fail("bad_response", "sent an image with too many pixels.")
        fmt = PASSED_ON.get(image.format or "")
        if fmt == "png":
            check_png(raw)
        elif fmt == "jpeg":
            check_jpeg(raw)
        else:
            image.load()  # a truncated image fails here, not later in the encoder
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, BrokenImage):
        raise call.fail("bad_response", "sent data that is not a readable image.") from None
    if fmt is None:
        return GeneratedImage(image=image)  # re-encoded later: keep the pixels
    if fmt == "webp":  # decoded to check it: reopen, so no pixels wait in memory
        image = Image.open(io.BytesIO(raw), formats=SUPPORTED_FORMATS)
    return GeneratedImage(image=image, data=raw, format=fmt)


async def image_from_url(call: UpstreamCall, url: Any) -> GeneratedImage:
    """Download an upstream's image (its links expire; ours replace them), capped and guarded
    (`ImageDownloader`), and check it as an inline one: passed on as it came where it can be."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise call.fail("bad_response", "sent an image link that is not a URL.")
    own_host = httpx.URL(call.deployment.base_url).host
    try:
        raw = await call.downloader.read(url, own_host=own_host,
                                         timeout_seconds=call.deployment.timeout_seconds)
    except APIError as exc:
        raise call.fail("bad_response", "sent an image link that could not be used ("
                        f"{exc.code}).") from None
    return await checked_bytes(call, raw)
