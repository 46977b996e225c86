"""The visible mark (labels/mark.py): as tall as GB 45438-2025 asks (5% of the shorter edge),
legible on any image, drawn in the corner asked for, and nothing outside its plate touched.

Every measure is taken from the returned pixels: the plate is where the image changed, the text
is its light pixels; MarkPlacement is only checked against them."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from imagegate.labels import mark
from imagegate.labels.errors import LabelError
from imagegate.labels.mark import (
    DEFAULT_TEXT,
    MIN_TEXT_HEIGHT,
    MarkPlacement,
    add_visible_mark,
    check_mark_text,
    place_mark,
)

TEXTS = [DEFAULT_TEXT["zh"], DEFAULT_TEXT["en"]]
SIZES = [(512, 512), (1024, 1024), (1344, 768), (64, 64), (2048, 512)]
TEXT_LEVEL = 170
"""A pixel whose every channel is at least this is text: the plate is at most 87 (66% black
over white), the text 255, so this is text at two-thirds coverage or more."""


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _plain(width: int, height: int, value: int) -> Image.Image:
    return Image.new("RGB", (width, height), (value, value, value))


def _changed_box(before: Image.Image, after: Image.Image) -> tuple[int, int, int, int]:
    """The bounding box (x0, y0, x1, y1) of every pixel the mark changed."""
    diff = np.any(np.asarray(before) != np.asarray(after), axis=-1)
    rows, cols = np.nonzero(diff)
    assert rows.size, "the mark changed nothing"
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def _text_pixels(after: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    """A boolean mask, over the plate, of the text's pixels."""
    plate = np.asarray(after.crop(box).convert("RGB"))
    mask: np.ndarray = np.all(plate >= TEXT_LEVEL, axis=-1)
    return mask


def _ink_height(text: np.ndarray) -> int:
    rows = np.nonzero(text.any(axis=1))[0]
    assert rows.size, "no text pixels on the plate"
    return int(rows.max() - rows.min() + 1)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """WCAG 2 relative luminance of 8-bit sRGB pixels."""
    c = rgb.astype(float) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    result: np.ndarray = linear @ np.array([0.2126, 0.7152, 0.0722])
    return result


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_text_is_at_least_five_percent_of_the_shorter_edge(size: tuple[int, int],
                                                           text: str) -> None:
    width, height = size
    before = _noise(width, height)
    after = add_visible_mark(before, text)
    assert after.size == before.size and after.mode == before.mode

    box = _changed_box(before, after)
    x0, y0, x1, y1 = box
    assert 0 < x0 < x1 < width and 0 < y0 < y1 < height  # inside, clear of the edges
    placement = place_mark(width, height, text)
    assert (placement.x, placement.y, placement.x + placement.width,
            placement.y + placement.height) == box
    # Outside the plate, every pixel is the input's (the box is all that changed); the input
    # itself is untouched.
    assert np.array_equal(np.asarray(before), np.asarray(_noise(width, height)))

    ink = _ink_height(_text_pixels(after, box))
    shorter = min(width, height)
    assert ink >= MIN_TEXT_HEIGHT * shorter
    assert placement.text_height >= math.ceil(MIN_TEXT_HEIGHT * shorter)
    assert ink >= placement.text_height
    if shorter >= 200:  # room to spare: the 10 px floor holds and the text is on one line
        assert ink >= 10 and ink < 2 * placement.text_height


def test_small_image_keeps_the_legible_floor_for_the_chinese_label() -> None:
    before = _plain(64, 64, 128)
    after = add_visible_mark(before, DEFAULT_TEXT["zh"])
    assert _ink_height(_text_pixels(after, _changed_box(before, after))) >= 10


@pytest.mark.parametrize("background", ["white", "black", "grey", "noise"])
@pytest.mark.parametrize("text", TEXTS)
def test_legible_on_light_dark_and_busy_images(background: str, text: str) -> None:
    before = {"white": _plain(512, 512, 255), "black": _plain(512, 512, 0),
              "grey": _plain(512, 512, 128), "noise": _noise(512, 512, seed=1)}[background]
    after = add_visible_mark(before, text)
    placement = place_mark(512, 512, text)
    box = (placement.x, placement.y, placement.x + placement.width,
           placement.y + placement.height)
    plate = np.asarray(after.crop(box))
    text_mask = _text_pixels(after, box)
    # The plate's own pixels: everything 3 px or more away from the text (its anti-aliased
    # edge is neither text nor plate).
    near_text = np.asarray(Image.fromarray(text_mask.astype(np.uint8) * 255)
                           .filter(ImageFilter.MaxFilter(7))) > 0
    assert text_mask.sum() > 100 and (~near_text).sum() > 1000

    text_luminance = float(np.median(_luminance(plate[text_mask])))
    plate_luminance = float(_luminance(plate[~near_text]).max())  # the lightest plate pixel
    contrast = (text_luminance + 0.05) / (plate_luminance + 0.05)
    assert contrast >= 4.5, f"{contrast:.2f}:1 on {background}"


def test_chinese_glyphs_are_drawn_not_tofu() -> None:
    before = _plain(512, 512, 128)

    def ink(text: str) -> np.ndarray:
        after = add_visible_mark(before, text)
        pixels = _text_pixels(after, _changed_box(before, after))
        rows, cols = np.nonzero(pixels)
        assert rows.size > 50, f"{text!r} has no ink"
        cropped: np.ndarray = pixels[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        return cropped

    sheng, cheng = ink("生"), ink("成")
    assert sheng.shape != cheng.shape or not np.array_equal(sheng, cheng)
    # Both labels draw every character: the Chinese one is wider than its "AI" alone.
    assert ink(DEFAULT_TEXT["zh"]).shape[1] > ink("AI").shape[1] * 2
    assert ink(DEFAULT_TEXT["en"]).shape[1] > ink("AI").shape[1] * 3


@pytest.mark.parametrize("corner", ["top-left", "top-right", "bottom-left", "bottom-right"])
def test_each_corner_puts_the_plate_in_that_corner(corner: str) -> None:
    width, height = 1344, 768
    before = _noise(width, height, seed=2)
    after = add_visible_mark(before, DEFAULT_TEXT["en"], corner)
    x0, y0, x1, y1 = _changed_box(before, after)
    near = 0.05 * min(width, height)  # within the margin of the two edges that make the corner
    vertical, horizontal = corner.split("-")
    if horizontal == "left":
        assert x0 <= near and x1 < width / 2
    else:
        assert width - x1 <= near and x0 > width / 2
    if vertical == "top":
        assert y0 <= near and y1 < height / 2
    else:
        assert height - y1 <= near and y0 > height / 2
    assert place_mark(width, height, DEFAULT_TEXT["en"], corner) == MarkPlacement(
        x0, y0, x1 - x0, y1 - y0, place_mark(width, height, DEFAULT_TEXT["en"]).text_height)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
def test_same_size_and_mode_and_a_plate_even_on_transparency(mode: str) -> None:
    before = Image.new(mode, (300, 200), 0)  # transparent where there is alpha
    after = add_visible_mark(before, DEFAULT_TEXT["zh"])
    assert (after.mode, after.size) == (mode, (300, 200))
    placement = place_mark(300, 200, DEFAULT_TEXT["zh"])
    inside = after.crop((placement.x, placement.y, placement.x + placement.width,
                         placement.y + placement.height))
    if "A" in mode:
        assert inside.getchannel("A").getextrema()[0] >= 160  # the plate is seen
    assert inside.convert("L").getextrema()[1] == 255  # white text
    assert before.getextrema() == Image.new(mode, (300, 200), 0).getextrema()


@pytest.mark.parametrize("text", [
    "", "   ", "x" * 41,
    "AI 🤖",  # emoji
    "مولد بالذكاء الاصطناعي",  # Arabic
    "AI\ngenerated",  # a line break
    "...",  # nothing to read
])
def test_undrawable_text_is_refused(text: str) -> None:
    with pytest.raises(LabelError):
        check_mark_text(text)
    with pytest.raises(LabelError):
        add_visible_mark(_plain(512, 512, 0), text)


def test_refusal_names_the_characters_the_fonts_lack() -> None:
    with pytest.raises(LabelError, match="🤖"):
        check_mark_text("AI 🤖 generated")


@pytest.mark.parametrize("text", [
    *TEXTS, "人工智能合成", "本图片由人工智能生成", "AI合成", "Généré par IA", "KI-generiert",
    "x" * 40,
    "AI generated…",  # "…" is not in the mark's font but is in Pillow's: drawn with that
])
def test_label_wordings_draw(text: str) -> None:
    check_mark_text(text)
    before = _plain(1024, 1024, 255)
    after = add_visible_mark(before, text)
    assert _text_pixels(after, _changed_box(before, after)).sum() > 100


def test_bad_corner_mode_and_too_small_an_image_are_refused() -> None:
    with pytest.raises(LabelError, match="corner"):
        place_mark(512, 512, "AI生成", "middle")
    with pytest.raises(LabelError, match="RGB"):
        add_visible_mark(Image.new("CMYK", (512, 512)), "AI生成")
    with pytest.raises(LabelError, match="too small"):
        add_visible_mark(_plain(16, 16, 0), "AI generated")


def test_concurrent_marks_are_identical() -> None:
    # Delivery draws marks from worker threads; fonts render under a lock, layouts are shared.
    mark._layout.cache_clear()
    mark._sized_font.cache_clear()
    before = _noise(777, 555, seed=3)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: add_visible_mark(before, "AI生成 AI generated"),
                                 range(16)))
    first = np.asarray(results[0])
    assert all(np.array_equal(first, np.asarray(result)) for result in results[1:])


def test_the_font_is_small_licensed_and_shipped() -> None:
    root = Path(__file__).resolve().parent.parent
    fonts = root / "src" / "imagegate" / "labels" / "fonts"
    font = fonts / "WenQuanYiMicroHei-mark.ttf"
    assert font.stat().st_size < 100_000
    assert "Apache License" in (fonts / "LICENSE-WenQuanYiMicroHei.txt").read_text()
    assert '"labels/fonts/*"' in (root / "pyproject.toml").read_text()
    assert (root / "scripts" / "subset-mark-font.sh").exists()
