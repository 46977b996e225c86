"""Encode decoded images into the bytes a client asked for. CPU-bound: call it off the event
loop."""

from __future__ import annotations

import io
from typing import Any

from ..generation import OutputFormat

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def encode(image: Any, fmt: OutputFormat, compression: int | None = None,
           background: str = "opaque") -> bytes:
    """PIL image -> PNG / JPEG / WebP bytes.

    `compression` is OpenAI's output_compression (0-100, default 100) and maps to the encoder's
    quality for JPEG and WebP; PNG is lossless and ignores it.
    """
    if background != "transparent" or fmt == "jpeg":
        image = _opaque(image)
    buf = io.BytesIO()
    options: dict[str, Any] = {}
    if fmt in ("jpeg", "webp"):
        options["quality"] = 100 if compression is None else max(1, compression)
    image.save(buf, format=_PIL_FORMATS[fmt], **options)
    return buf.getvalue()


def _opaque(image: Any) -> Any:
    if image.mode in ("RGB", "L"):
        return image
    if image.mode in ("RGBA", "LA", "P"):
        from PIL import Image

        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")
