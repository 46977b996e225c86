"""Decode untrusted image bytes into pixels a model can use, within bounds on pixels.

* Only the formats image models take (`SUPPORTED_FORMATS`). Restricting PIL's plugins also keeps
  untrusted bytes away from the riskier decoders (EPS shells out to Ghostscript; TIFF and PSD are
  large attack surfaces).
* The image's declared pixel count is checked before any pixel is decoded (decompression bombs).
* Bounded memory: a small file can hold a huge image (a 35 KB PNG of 6000x6000 decodes to
  100 MB), so decoded pixels are budgeted. An image larger than the model works at is reduced
  to that size as it is decoded (JPEG decodes at 1/2, 1/4 or 1/8 scale; others are shrunk right
  after decoding, and the full-size copy is dropped at once), and the pixels being decoded across
  the whole server can be capped (`PixelBudget`): past the cap a request is refused with 429
  `server_busy` and a Retry-After, rather than allocated.
* A phone photo is turned upright (its EXIF orientation), and every image comes out RGB or RGBA.

Decoding is CPU-bound: callers on the event loop run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
import time
from dataclasses import dataclass

from PIL import Image, ImageOps

from ..errors import InvalidRequest, ServerBusy

__all__ = ["DEFAULT_MAX_PIXELS", "DecodedImage", "PixelBudget", "SUPPORTED_FORMATS",
           "decode_image"]

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
DEFAULT_MAX_PIXELS = 25_000_000  # width * height, checked before decoding


@dataclass
class DecodedImage:
    image: Image.Image  # loaded, EXIF orientation applied, mode RGB or RGBA (alpha kept for masks)
    width: int
    height: int
    format: str  # as detected from the bytes: "PNG", "JPEG", "WEBP" or "GIF"


def _refuse(message: str, param: str, code: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


class PixelBudget:
    """Pixels being decoded right now, server-wide, under a cap. Thread-safe: decoding runs in
    worker threads. A decode that would pass the cap is refused (429), never queued: the client
    retries after Retry-After, estimated from how long decodes have been taking."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0
        self.seconds = 0.0
        """Running average of one budgeted decode (seconds)."""
        self._lock = threading.Lock()

    def take(self, pixels: int) -> None:
        with self._lock:
            if self.limit is not None and self.used + pixels > self.limit:
                wait = max(1, math.ceil(self.seconds))
                raise ServerBusy("The server is decoding too many large input images; retry in "
                                 f"about {wait} s.", headers={"retry-after": str(wait)})
            self.used += pixels

    def give_back(self, pixels: int, seconds: float) -> None:
        with self._lock:
            self.used -= pixels
            self.seconds = seconds if not self.seconds else 0.2 * seconds + 0.8 * self.seconds


def decode_image(data: bytes, *, param: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_edge: int | None = None, budget: PixelBudget | None = None) -> DecodedImage:
    """Decode untrusted bytes into an RGB/RGBA image, refusing bombs before allocating pixels.

    With `max_edge`, an image whose longer edge is longer comes back reduced to it (aspect kept;
    the size depends only on the original's, so an image and its mask stay alike). With
    `budget`, the pixels decoded are counted against it while decoding runs (429 when full).

    Blocking (CPU-bound); call it through `asyncio.to_thread` from the event loop.
    """
    if not data:
        raise _refuse(f"`{param}` is empty; expected an image.", param, "invalid_image")
    try:
        # Image.open reads only the header; pixels are decoded by load(), after the size check.
        image: Image.Image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # PIL's own guard fired first (far above our cap, or warnings are errors).
        raise _refuse(f"The image in `{param}` has more than {max_pixels} pixels.",
                      param, "image_too_many_pixels") from None
    except Exception:  # PIL's plugins raise a zoo of exception types on malformed input
        raise _not_an_image(param) from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise _not_an_image(param)
    if width * height > max_pixels:
        raise _refuse(f"The image in `{param}` is {width}x{height} pixels; at most {max_pixels} "
                      "pixels are allowed.", param, "image_too_many_pixels")
    detected = "JPEG" if image.format == "MPO" else str(image.format)  # MPO: a camera's JPEG
    target = _working_size(width, height, max_edge)
    if target != (width, height):
        # JPEG only: decode at the smallest 1/2^k scale still at least twice the target
        with contextlib.suppress(Exception):
            image.draft(None, (target[0] * 2, target[1] * 2))
    pixels = image.width * image.height
    if budget is not None:
        budget.take(pixels)
    started = time.monotonic()
    try:
        image.load()  # animated images: the first frame, where open() leaves them
        image = _reduced(image, target)
        image = _upright(image)
        image = _to_rgb_or_rgba(image)
    except Exception:
        raise _not_an_image(param) from None
    finally:
        if budget is not None:
            budget.give_back(pixels, time.monotonic() - started)
    return DecodedImage(image=image, width=image.width, height=image.height, format=detected)


def _working_size(width: int, height: int, max_edge: int | None) -> tuple[int, int]:
    """(width, height) scaled so that the longer edge is at most `max_edge`."""
    longest = max(width, height)
    if max_edge is None or longest <= max_edge:
        return width, height
    scale = max_edge / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


_RESAMPLED_MODES = ("L", "LA", "RGB", "RGBA")


def _reduced(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """`image` at `target` size, the full-size pixels dropped as soon as they are read. Modes
    that cannot be filtered (palette, 1-bit, 16-bit) are first shrunk to twice the target by
    picking pixels and converted to RGB(A) there, on a small image."""
    if image.size == target:
        return image
    if image.mode in _RESAMPLED_MODES:
        small = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=2.0)
    else:
        twice = (min(image.width, target[0] * 2), min(image.height, target[1] * 2))
        coarse = _to_rgb_or_rgba(image.resize(twice, Image.Resampling.NEAREST))
        small = coarse.resize(target, Image.Resampling.LANCZOS)
    image.close()  # (resize and convert carry `info`, EXIF orientation included)
    return small


def _not_an_image(param: str) -> InvalidRequest:
    kinds = ", ".join(SUPPORTED_FORMATS)
    return _refuse(f"`{param}` is not a valid image (supported formats: {kinds}).",
                   param, "invalid_image")


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, so a phone photo is not used sideways."""
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:  # a malformed EXIF block is no reason to refuse the picture itself
        return image


def _to_rgb_or_rgba(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):
        # 16/32-bit grey (depth maps): scale to 8 bits; a plain convert would clip at 255.
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")
