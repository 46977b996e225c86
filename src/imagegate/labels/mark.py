"""The explicit label: a visible "AI生成" / "AI generated" mark drawn in a corner of the image.

GB 45438-2025 asks a service that publishes generated images for a label a person can see: text
in at least one corner or edge, its height at least 5% of the image's shorter edge, clearly
legible. The text is light on a semi-opaque dark plate, so it reads the same on a white, a black
or a busy image (the plate keeps at least 7:1 contrast, WCAG's AAA bar, over pure white).

Text height here is ink height: the tallest glyph's solidly inked rows, measured on the rendered
glyphs at the size drawn, so hinting and the font's own proportions cannot make the mark smaller
than the standard allows. A text too wide for the image wraps (between words, or between Chinese
characters) before it shrinks, and it never shrinks below 5% of the shorter edge.

The font is a small subset of WenQuanYi Micro Hei (fonts/, remade by
scripts/subset-mark-font.sh): printable Latin-1 and the Chinese wordings of the label. Text it
lacks but Pillow's own font has is drawn with that; anything else is refused with `LabelError`
(`check_mark_text`, which the wiring calls on configured texts at start).
"""

from __future__ import annotations

import math
import struct
import threading
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .errors import LabelError

DEFAULT_TEXT = {"zh": "AI生成", "en": "AI generated"}
MIN_TEXT_HEIGHT = 0.05
"""Of the shorter edge (GB 45438-2025)."""

MAX_TEXT_LENGTH = 40
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")

_FONT_FILE = Path(__file__).parent / "fonts" / "WenQuanYiMicroHei-mark.ttf"
_LEGIBLE_FLOOR = 10
"""The text height aimed at on images so small that 5% of their edge would be unreadable."""
_SMALLEST = 6
"""Below this many pixels a mark is not legible: shrinking to fit stops here."""
_INK = 192
"""Mask coverage (of 255) that counts as ink when measuring text height: 75%, so anti-aliased
edges, drawn lighter over the dark plate, never count towards the height."""
_SOLID = [255 if value >= _INK else 0 for value in range(256)]
_PLATE_ALPHA = 168
"""66% black: white text keeps 7.2:1 contrast even where the plate lies over pure white."""
_TEXT_COLOUR = (255, 255, 255, 255)
_MODES = ("RGB", "RGBA", "L", "LA")

# FreeType faces are not safe to render from two threads at once, and delivery runs in worker
# threads: layouts (the only place fonts render) are built under this lock and then cached.
_render_lock = threading.Lock()


@dataclass(frozen=True)
class MarkPlacement:
    """Where the mark goes: the plate's box in image pixels, and the text height drawn on it."""

    x: int
    y: int
    width: int
    height: int
    text_height: int
    """The glyphs' ink height in pixels (the tallest glyph's rows of at least 75% coverage)."""


@dataclass(frozen=True)
class _Layout:
    """A mark rendered once for a text and a size: what every image of that size reuses."""

    text_mask: Image.Image  # L, plate-sized: the text's coverage
    plate: Image.Image  # RGBA, plate-sized: the dark plate
    text_height: int


def check_mark_text(text: str) -> None:
    """Refuse a mark text that cannot be drawn legibly: empty, longer than 40 characters, without
    a letter or digit, or with a character neither the mark's font nor Pillow's has (an emoji,
    Arabic, a line break...)."""
    if not text.strip():
        raise LabelError("the visible mark's text is empty")
    if len(text) > MAX_TEXT_LENGTH:
        raise LabelError(f"the visible mark's text is {len(text)} characters long; "
                         f"at most {MAX_TEXT_LENGTH} are allowed")
    if not any(ch.isalnum() for ch in text):
        raise LabelError(f"the visible mark's text {text!r} has no letter or digit")
    _font_source(text)


def place_mark(width: int, height: int, text: str,
               corner: str = "bottom-right") -> MarkPlacement:
    """Where `add_visible_mark` draws `text` on a `width` x `height` image, and how tall.

    The text is ceil(5%) of the shorter edge tall and at least 10 px; the plate keeps a margin
    of 2% of the shorter edge (at least 2 px) from the image's edges. `LabelError` when the
    text cannot be drawn or the image is too small for a legible mark.
    """
    x, y, layout = _place(width, height, text, corner)
    plate_width, plate_height = layout.plate.size
    return MarkPlacement(x, y, plate_width, plate_height, layout.text_height)


def add_visible_mark(image: Image.Image, text: str,
                     corner: str = "bottom-right") -> Image.Image:
    """A copy of `image` (same size and mode) with the mark drawn in `corner`. Only the plate's
    pixels change."""
    if image.mode not in _MODES:
        raise LabelError(f"a visible mark is drawn on RGB, RGBA, L or LA images, not {image.mode}")
    x, y, layout = _place(image.width, image.height, text, corner)
    box = (x, y, x + layout.plate.width, y + layout.plate.height)
    region = image.crop(box).convert("RGBA")
    region.alpha_composite(layout.plate)
    region.paste(_TEXT_COLOUR, (0, 0, *region.size), layout.text_mask)
    marked = image.copy()
    marked.paste(region.convert(image.mode), box)
    return marked


def _place(width: int, height: int, text: str, corner: str) -> tuple[int, int, _Layout]:
    if corner not in CORNERS:
        raise LabelError(f"unknown corner {corner!r} for the visible mark; one of "
                         + ", ".join(CORNERS))
    if width <= 0 or height <= 0:
        raise LabelError(f"no visible mark on a {width}x{height} image")
    check_mark_text(text)
    shorter = min(width, height)
    minimum = math.ceil(MIN_TEXT_HEIGHT * shorter)
    target = max(minimum, _LEGIBLE_FLOOR)
    margin = max(2, math.ceil(0.02 * shorter))
    layout = _layout(text, target, max(minimum, _SMALLEST), width - 2 * margin,
                     height - 2 * margin)
    if layout is None:
        raise LabelError(f"a {width}x{height} image is too small for a legible visible mark "
                         f"{text!r}")
    plate_width, plate_height = layout.plate.size
    x = margin if corner.endswith("left") else width - margin - plate_width
    y = margin if corner.startswith("top") else height - margin - plate_height
    return x, y, layout


@lru_cache(maxsize=256)
def _layout(text: str, target: int, minimum: int, room_width: int,
            room_height: int) -> _Layout | None:
    """The largest mark from `target` down to `minimum` px text that fits the room: on one line,
    else wrapped between words; at the smallest size, wrapped anywhere. None if nothing fits."""
    with _render_lock:
        for size in range(target, minimum - 1, -1):
            font, text_height = _sized_font(text, size)
            wraps = [False, True] if size > minimum else [False, True, None]
            for split in wraps:
                room = room_width - 2 * _padding(size)[0]
                lines = [text] if split is False else _wrap(font, text, room, split is None)
                layout = _render(font, lines, size, text_height)
                if layout.plate.width <= room_width and layout.plate.height <= room_height:
                    return layout
    return None


def _render(font: ImageFont.FreeTypeFont, lines: list[str], size: int,
            text_height: int) -> _Layout:
    """The plate and text mask for `lines`, padded in proportion to the text size."""
    pad_x, pad_y = _padding(size)
    gap = round(0.3 * size)
    inks = [_ink(font, line) for line in lines]
    top = min(ink_top for _, ink_top, _ in inks)
    bottom = max(ink_bottom for _, _, ink_bottom in inks)
    widest = max(mask.width for mask, _, _ in inks)
    pitch = bottom - top + gap
    plate_size = (widest + 2 * pad_x, len(lines) * pitch - gap + 2 * pad_y)
    text_mask = Image.new("L", plate_size, 0)
    for row, (mask, ink_top, _) in enumerate(inks):
        text_mask.paste(mask, (pad_x + (widest - mask.width) // 2,
                               pad_y + row * pitch + ink_top - top))
    plate = Image.new("RGBA", plate_size, (0, 0, 0, _PLATE_ALPHA))
    return _Layout(text_mask, plate, text_height)


def _padding(size: int) -> tuple[int, int]:
    """The plate's padding around the text, horizontal and vertical."""
    return max(2, round(0.45 * size)), max(2, round(0.3 * size))


def _ink(font: ImageFont.FreeTypeFont, line: str) -> tuple[Image.Image, int, int]:
    """`line` rendered: its mask cropped to the ink, and the ink's top and bottom relative to
    the baseline."""
    left, top, right, bottom = (round(edge) for edge in font.getbbox(line, anchor="ls"))
    canvas = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    origin = (2 - left, 2 - top)
    ImageDraw.Draw(canvas).text(origin, line, fill=255, font=font, anchor="ls")
    box = canvas.getbbox() or (0, 0, 1, 1)
    return canvas.crop(box), box[1] - origin[1], box[3] - origin[1]


@lru_cache(maxsize=256)
def _sized_font(text: str, target: int) -> tuple[ImageFont.FreeTypeFont, int]:
    """The smallest font size at which `text`'s tallest glyph is at least `target` px of ink,
    with that ink height."""
    glyphs = sorted({ch for ch in text if not ch.isspace()})
    source = _font_source(text)

    def measure(size: int) -> tuple[ImageFont.FreeTypeFont, int]:
        font = _font(source, size)
        return font, max(_ink_height(font, ch) for ch in glyphs)

    reference = 200
    size = max(1, math.ceil(target * reference / measure(reference)[1]))
    font, height = measure(size)
    while height < target:
        size += 1
        font, height = measure(size)
    while size > 1:
        smaller, smaller_height = measure(size - 1)
        if smaller_height < target:
            break
        size, font, height = size - 1, smaller, smaller_height
    return font, height


def _ink_height(font: ImageFont.FreeTypeFont, glyph: str) -> int:
    mask, _, _ = _ink(font, glyph)
    solid = mask.point(_SOLID).getbbox()
    return 0 if solid is None else solid[3] - solid[1]


@lru_cache(maxsize=64)
def _font(source: str, size: int) -> ImageFont.FreeTypeFont:
    if source == "mark":
        return ImageFont.truetype(BytesIO(_font_bytes()), size)
    return ImageFont.truetype(BytesIO(_default_font_bytes()), size)


def _wrap(font: ImageFont.FreeTypeFont, text: str, room: int, anywhere: bool) -> list[str]:
    """`text` broken greedily into lines of at most `room` px: between words and around
    Chinese characters, or (`anywhere`) between any two characters."""
    units: list[str] = []
    for ch in text:
        joins = (units and not anywhere and not _breaks_around(ch)
                 and not _breaks_around(units[-1][-1]))
        if joins:
            units[-1] += ch
        else:
            units.append(ch)
    lines = [""]
    for unit in units:
        if lines[-1].strip() and font.getlength((lines[-1] + unit).strip()) > room:
            lines.append(unit)
        else:
            lines[-1] += unit
    return [line.strip() for line in lines if line.strip()]


def _breaks_around(ch: str) -> bool:
    """A line may break before and after a space or a wide (Chinese) character."""
    return ch.isspace() or unicodedata.east_asian_width(ch) in ("W", "F")


def _font_source(text: str) -> str:
    """Which font draws `text`: "mark" (the subset) when it has every character, else "pillow"
    (Pillow's own) when that has them all; `LabelError` naming what neither has."""
    needed = {ord(ch) for ch in text}
    if needed <= _coverage("mark"):
        return "mark"
    if needed <= _coverage("pillow"):
        return "pillow"
    drawable = _coverage("mark") | _coverage("pillow")
    missing = "".join(dict.fromkeys(ch for ch in text if ord(ch) not in drawable))
    raise LabelError(f"the visible mark cannot draw {missing!r} (in {text!r}): its fonts have "
                     "Latin-1 and the Chinese label wordings (AI生成, 人工智能合成, ...)")


@lru_cache(maxsize=2)
def _coverage(source: str) -> frozenset[int]:
    try:
        data = _font_bytes() if source == "mark" else _default_font_bytes()
    except (OSError, LabelError):
        return frozenset()
    return _cmap(data)


@lru_cache(maxsize=1)
def _font_bytes() -> bytes:
    return _FONT_FILE.read_bytes()


@lru_cache(maxsize=1)
def _default_font_bytes() -> bytes:
    font = ImageFont.load_default(10)
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise LabelError("the visible mark needs Pillow built with FreeType")
    return font.font_bytes


def _cmap(font: bytes) -> frozenset[int]:
    """The characters a TrueType font maps to a glyph, from its Unicode cmap subtable (format
    4, the Basic Multilingual Plane, or 12, all of Unicode). Read here rather than with a font
    library: the two fonts are known and small, and this is all the mark needs to know."""
    tables = {font[12 + 16 * i:16 + 16 * i]: struct.unpack_from(">I", font, 20 + 16 * i)[0]
              for i in range(struct.unpack_from(">H", font, 4)[0])}
    cmap = tables[b"cmap"]
    subtables = {}
    for i in range(struct.unpack_from(">H", font, cmap + 2)[0]):
        platform, encoding, offset = struct.unpack_from(">HHI", font, cmap + 4 + 8 * i)
        subtables[(platform, encoding)] = cmap + offset
    for key in ((3, 10), (0, 4), (3, 1), (0, 3)):
        if key in subtables:
            start = subtables[key]
            form = struct.unpack_from(">H", font, start)[0]
            if form == 12:
                return _cmap12(font, start)
            if form == 4:
                return _cmap4(font, start)
    return frozenset()


def _cmap4(font: bytes, start: int) -> frozenset[int]:
    segments = struct.unpack_from(">H", font, start + 6)[0] // 2
    ends = start + 14
    starts = ends + 2 * segments + 2
    deltas = starts + 2 * segments
    range_offsets = deltas + 2 * segments
    points: set[int] = set()
    for seg in range(segments):
        end, first = (struct.unpack_from(">H", font, base + 2 * seg)[0] for base in (ends, starts))
        delta = struct.unpack_from(">h", font, deltas + 2 * seg)[0]
        range_offset = struct.unpack_from(">H", font, range_offsets + 2 * seg)[0]
        for point in range(first, min(end, 0xFFFE) + 1):
            if range_offset:
                where = range_offsets + 2 * seg + range_offset + 2 * (point - first)
                glyph = struct.unpack_from(">H", font, where)[0]
                glyph = (glyph + delta) & 0xFFFF if glyph else 0
            else:
                glyph = (point + delta) & 0xFFFF
            if glyph:
                points.add(point)
    return frozenset(points)


def _cmap12(font: bytes, start: int) -> frozenset[int]:
    groups = struct.unpack_from(">I", font, start + 12)[0]
    points: set[int] = set()
    for group in range(groups):
        first, last, glyph = struct.unpack_from(">III", font, start + 16 + 12 * group)
        points.update(range(first + (glyph == 0), last + 1))
    return frozenset(points)
