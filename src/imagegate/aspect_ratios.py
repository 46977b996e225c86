"""Aspect ratio + image size -> pixels, as Gemini image models define them.

The table is the one vendors' gemini-2.5-flash-image docs give (OpenRouter lists the same at 1K).
`image_size` scales it: 1K is the table, 2K twice each edge, 4K four times, 0.5K half. The
result is a preference that the service then fits to what the chosen model accepts.
"""

from __future__ import annotations

from .errors import InvalidRequest
from .generation import Size

AT_1K: dict[str, Size] = {
    "1:1": Size(1024, 1024),
    "2:3": Size(832, 1248),
    "3:2": Size(1248, 832),
    "3:4": Size(864, 1184),
    "4:3": Size(1184, 864),
    "4:5": Size(896, 1152),
    "5:4": Size(1152, 896),
    "9:16": Size(768, 1344),
    "16:9": Size(1344, 768),
    "21:9": Size(1536, 672),
}
SCALES = {"0.5K": 0.5, "1K": 1, "2K": 2, "4K": 4}


def size_for(aspect_ratio: str | None, image_size: str | None, *,
             ratio_param: str, size_param: str) -> Size | None:
    """None when neither is given (the caller decides: 1:1, or the input image's shape)."""
    if aspect_ratio is None and image_size is None:
        return None
    ratio = (aspect_ratio or "1:1").strip()
    if ratio not in AT_1K:
        raise InvalidRequest(f"Unsupported aspect ratio {ratio!r}; supported: "
                             f"{', '.join(AT_1K)}.", param=ratio_param,
                             code="invalid_aspect_ratio")
    label = (image_size or "1K").strip().upper()
    if label not in SCALES:
        raise InvalidRequest(f"Unsupported image_size {image_size!r}; supported: "
                             f"{', '.join(SCALES)}.", param=size_param)
    base, scale = AT_1K[ratio], SCALES[label]
    return Size(int(base.width * scale), int(base.height * scale))
