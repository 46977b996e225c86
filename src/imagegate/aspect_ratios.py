"""Aspect ratio + image size <-> pixels, as Gemini image models define them; the one home of
this table and of both directions through it.

The table is the one vendors' gemini-2.5-flash-image docs give (OpenRouter lists the same at 1K).
`image_size` scales it: 1K is the table, 2K twice each edge, 4K four times, 0.5K half.

In (`size_for`): a chat request's `image_config` -> the size it prefers, which the service then
fits to what the chosen model accepts.

Out (`nearest_ratio`, `size_label`): the size a request resolved to -> the ratio and the 1K/2K/4K
tier an upstream is asked for, the same for every wire format that takes them (Gemini's
`imageConfig`, OpenAI-style chat's `image_config`, Imagen's `sampleImageSize`). The tier goes by
pixel count, not by edge: the 1K table keeps every ratio near one megapixel (1024x1024,
1344x768, 1536x672) while its longer edge runs from 1024 to 1536, and each tier above doubles
both edges. So a request is measured by the square root of its area over its ratio's 1K area:
up to 1.5x is 1K, up to 3x is 2K, beyond that 4K.
"""

from __future__ import annotations

import math

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


def nearest_ratio(width: int, height: int, table: dict[str, Size] = AT_1K) -> str:
    """The table's ratio nearest to width:height, compared as logs (so 2:1 and 1:2 are equally
    far from 1:1). `table` is another vendor's subset where it takes fewer (Imagen)."""
    target = math.log(width / height)
    return min(table, key=lambda r: abs(math.log(table[r].width / table[r].height) - target))


def size_label(width: int, height: int, ratio: str, table: dict[str, Size] = AT_1K) -> str:
    """'1K', '2K' or '4K' for width x height at `ratio`: by pixel count (see above)."""
    base = table[ratio]
    scale = math.sqrt(width * height / (base.width * base.height))
    if scale <= 1.5:
        return "1K"
    return "2K" if scale <= 3 else "4K"
