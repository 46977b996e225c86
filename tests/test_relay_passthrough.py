"""The relay passes an upstream's image on as it was encoded, and still refuses a broken one.

For a PNG asked for as a PNG, the client gets the upstream's file: every chunk of it, in order,
byte for byte (its image data untouched), with only the AI-content labels' metadata chunk
added; whether it asked for base64 or a link, and whether the upstream answered in base64 or
with a link. The gateway checks the file without decoding its pixels: PIL's `ImageFile.load`
(where every PIL decoder runs) is wrapped with a counter for the test, and must not be called
while such a request is served. A cut-short, corrupted or non-image payload is still a 502
`upstream_bad_response`, and costs the client nothing.

The router reads upstream answers under a byte budget (providers/upstream/budget.py): a body
past it waits its turn, first come first served, and one that leaves the queue passes its turn
on.

In-process gateway (conftest's `inprocess`), real fake upstream on a loopback port.
"""

from __future__ import annotations

import asyncio
import base64
import io
import random
import struct
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from PIL import Image, ImageFile, PngImagePlugin
from test_upstream_disconnect import account, paid_key, usage
from upstream_server import serve_app

PRICE_MICROS = 20_000

# --------------------------------------------------------------------------------------------
# images


def _noise_png() -> bytes:
    """An incompressible PNG in several IDAT chunks, with ancillary chunks of its own
    (physical size, gamma, a text note) that must survive as they are."""
    rng = random.Random(16)
    image = Image.frombytes("RGB", (320, 240), rng.randbytes(320 * 240 * 3))
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "made upstream")
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info, dpi=(72, 72), compress_level=1)
    return out.getvalue()


UPSTREAM_PNG = _noise_png()


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """A PNG's chunks as (type, the chunk's bytes from its length field to its CRC)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        found.append((data[pos + 4:pos + 8], data[pos:pos + 12 + length]))
        pos += 12 + length
    return found


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_of_stream(width: int, height: int, stream: bytes) -> bytes:
    """An 8-bit RGB PNG whose image data is the zlib `stream`, every CRC right."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream)
            + _chunk(b"IEND", b""))


def _rows(width: int, height: int) -> bytes:
    rng = random.Random(3)
    return b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))


def _bad_crc() -> bytes:
    data = bytearray(UPSTREAM_PNG)
    first_idat = data.index(b"IDAT")
    data[first_idat + 1000] ^= 0x20  # one bit of the image data: its chunk's CRC no longer fits
    return bytes(data)


def _truncated_idat() -> bytes:
    middle = [i for i, (kind, _) in enumerate(chunks(UPSTREAM_PNG)) if kind == b"IDAT"][0]
    start = UPSTREAM_PNG.index(chunks(UPSTREAM_PNG)[middle][1])
    return UPSTREAM_PNG[:start + 5000]


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (256, 256), random.Random(5).randbytes(256 * 256 * 3)).save(
        out, format="JPEG", quality=90)
    return out.getvalue()


BROKEN = {
    "bad-idat-crc": _bad_crc(),
    "truncated-idat": _truncated_idat(),
    # Every CRC right, but the zlib stream stops a row short of what the header promises ...
    "zlib-ends-early": _png_of_stream(40, 30, zlib.compress(_rows(40, 30)[:-(1 + 40 * 3)])),
    # ... or is cut before its end (no final block, no Adler-32) ...
    "zlib-cut": _png_of_stream(40, 30, zlib.compress(_rows(40, 30))[:-40]),
    # ... or holds a row with a filter type that does not exist.
    "bad-row-filter": _png_of_stream(40, 30, zlib.compress(b"\x07" + _rows(40, 30)[1:])),
    "no-iend": UPSTREAM_PNG[:-12],
    "truncated-jpeg": _jpeg()[:-2000],
    "not-an-image": b"<html><body>502 Bad Gateway</body></html>",
}


# --------------------------------------------------------------------------------------------
# the fake upstream


class Upstream:
    """What the fake answers: `b64` (its PNG inline), `url` (a link to it), `raw_b64` (the
    text in `b64_json` as it is, for base64 that is no base64)."""

    def __init__(self) -> None:
        self.mode = "b64"
        self.image = UPSTREAM_PNG
        self.text = ""
        self.base = ""

    def answer(self) -> dict[str, Any]:
        if self.mode == "url":
            item = {"url": f"{self.base}/files/image.png"}
        elif self.mode == "raw_b64":
            item = {"b64_json": self.text}
        else:
            item = {"b64_json": base64.b64encode(self.image).decode()}
        return {"created": 1, "data": [item]}


UPSTREAM = Upstream()


def _app() -> Any:
    import json

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if scope["path"].startswith("/files/"):
            body, kind = UPSTREAM.image, b"image/png"
        else:
            body, kind = json.dumps(UPSTREAM.answer()).encode(), b"application/json"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", kind),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


def _config(base: str) -> str:
    return f"""
[models.relayed]
backend = "upstream"
[models.relayed.capabilities]
sizes = ["1024x1024"]
[models.relayed.pricing]
per_image = "0.02"
[[models.relayed.deployments]]
provider = "openai_images"
base_url = "{base}/v1"
upstream_model = "dall-e-2"
timeout_seconds = 30
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with serve_app(_app()) as base:
        UPSTREAM.base = base
        yield UPSTREAM


@pytest.fixture
async def gateway(inprocess: Any, upstream: Upstream) -> AsyncIterator[Any]:
    upstream.mode, upstream.image = "b64", UPSTREAM_PNG
    yield await inprocess(config=_config(upstream.base))


class DecodeCounter:
    """Counts PIL decodes (`ImageFile.load` calls), from any thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = ImageFile.ImageFile.load

        def counted(image: Any) -> Any:
            self.calls += 1
            return real(image)

        monkeypatch.setattr(ImageFile.ImageFile, "load", counted)


async def _relay(srv: Any, key: str, response_format: str) -> Any:
    return await srv.client.post(
        "/v1/images/generations", headers={"Authorization": f"Bearer {key}"},
        json={"model": "relayed", "prompt": "a lighthouse", "size": "1024x1024",
              "response_format": response_format})


async def _delivered(srv: Any, response: Any) -> bytes:
    assert response.status_code == 200, response.text
    [item] = response.json()["data"]
    if "b64_json" in item:
        return base64.b64decode(item["b64_json"])
    got = await srv.client.get(item["url"])
    assert got.status_code == 200
    return bytes(got.content)


# --------------------------------------------------------------------------------------------
# passed on as it came


@pytest.mark.parametrize("answer", ["b64", "url"], ids=["upstream-b64", "upstream-link"])
@pytest.mark.parametrize("response_format", ["b64_json", "url"])
async def test_a_png_is_passed_on_untouched_with_only_its_labels_added(
        gateway: Any, upstream: Upstream, monkeypatch: pytest.MonkeyPatch,
        response_format: str, answer: str) -> None:
    upstream.mode = answer
    key = await paid_key(gateway, "pass", PRICE_MICROS)
    decodes = DecodeCounter(monkeypatch)
    response = await _relay(gateway, key, response_format)
    assert decodes.calls == 0  # checked and labelled without decoding a pixel
    delivered = await _delivered(gateway, response)

    theirs, ours = chunks(UPSTREAM_PNG), chunks(delivered)
    assert [kind for kind, _ in theirs].count(b"IDAT") > 1
    added = list(ours)
    for chunk in theirs:  # each of the upstream's chunks, in order, byte for byte
        assert chunk in added, chunk[0]
        added = added[added.index(chunk) + 1:]
    extra = [kind for kind, raw in ours if (kind, raw) not in theirs]
    assert extra == [b"iTXt"]  # the implicit label (XMP), metadata only
    assert b"TC260:AIGC" in dict(ours)[b"iTXt"]
    # Ours in the order of the file: theirs, in order, with the label among them.
    assert [c for c in ours if c in theirs] == theirs

    assert (await account(gateway, "pass"))["balance_micros"] == 0  # charged as before


async def test_a_jpeg_asked_for_as_png_is_converted(
        gateway: Any, upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a pass-through: the pixels are decoded (which the counter sees, wherever the
    server decodes) and encoded as asked."""
    upstream.image = _jpeg()
    key = await paid_key(gateway, "convert", PRICE_MICROS)
    decodes = DecodeCounter(monkeypatch)
    delivered = await _delivered(gateway, await _relay(gateway, key, "b64_json"))
    assert decodes.calls >= 1
    image = Image.open(io.BytesIO(delivered))
    assert (image.format, image.size) == ("PNG", (256, 256))


# --------------------------------------------------------------------------------------------
# refused, free


CASES = [pytest.param("b64", data, id=name) for name, data in BROKEN.items()] + [
    pytest.param("url", BROKEN["truncated-idat"], id="link-to-truncated-idat"),
    pytest.param("raw_b64", "iVBORw0KGgo!!!not-base64***", id="base64-garbage"),
    pytest.param("raw_b64", base64.b64encode(UPSTREAM_PNG).decode()[:-7], id="base64-cut"),
]


@pytest.mark.parametrize("mode,payload", CASES)
async def test_a_broken_image_is_a_502_and_costs_nothing(
        gateway: Any, upstream: Upstream, mode: str, payload: Any) -> None:
    upstream.mode = mode
    if mode == "raw_b64":
        upstream.text = payload
    else:
        upstream.image = payload
    key = await paid_key(gateway, "broken", PRICE_MICROS)
    response = await _relay(gateway, key, "b64_json")
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "upstream_bad_response"
    after = await account(gateway, "broken")
    assert (after["balance_micros"], after["held_micros"]) == (PRICE_MICROS, 0)
    [row] = await usage(gateway, "broken")
    assert (row["status"], row["cost_micros"]) == (502, 0)


# --------------------------------------------------------------------------------------------
# the answer budget: bodies read at once, bounded


async def test_answers_past_the_budget_wait_their_turn_in_order() -> None:
    from imagegate.providers.upstream.budget import AnswerBudget

    budget = AnswerBudget(limit=10)
    order: list[str] = []
    release = {name: asyncio.Event() for name in "abcd"}

    async def read(name: str, size: int) -> None:
        async with budget.hold(size):
            order.append(name)
            await release[name].wait()

    first = asyncio.ensure_future(read("a", 6))
    second = asyncio.ensure_future(read("b", 6))  # does not fit beside a
    third = asyncio.ensure_future(read("c", 2))  # would fit, but b came first
    huge = asyncio.ensure_future(read("d", 50))  # larger than the budget: alone, in turn
    while order != ["a"]:
        await asyncio.sleep(0)
    for _ in range(5):
        await asyncio.sleep(0)
    assert order == ["a"] and budget.used == 6
    release["a"].set()
    await first
    while len(order) < 3:
        await asyncio.sleep(0)
    assert order == ["a", "b", "c"] and budget.used == 8
    release["b"].set()
    release["c"].set()
    await asyncio.gather(second, third)
    while len(order) < 4:
        await asyncio.sleep(0)
    assert budget.used == 10
    release["d"].set()
    await huge
    assert budget.used == 0


async def test_a_cancelled_waiter_gives_its_turn_on() -> None:
    from imagegate.providers.upstream.budget import AnswerBudget

    budget = AnswerBudget(limit=10)
    holding = asyncio.Event()
    done = asyncio.Event()

    async def hold(size: int, until: asyncio.Event) -> None:
        async with budget.hold(size):
            holding.set()
            await until.wait()

    first = asyncio.ensure_future(hold(8, done))
    await holding.wait()
    stuck = asyncio.ensure_future(hold(8, asyncio.Event()))  # waits, then its client leaves
    small = asyncio.ensure_future(hold(2, done))  # fits now, but waits behind `stuck`
    for _ in range(5):
        await asyncio.sleep(0)
    assert budget.used == 8
    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck
    for _ in range(5):
        await asyncio.sleep(0)
    assert budget.used == 10  # `small` went in as soon as `stuck` left the queue
    done.set()
    await asyncio.gather(first, small)
    assert budget.used == 0
