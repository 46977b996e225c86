"""The implicit label of GB 45438-2025: a TC260 AIGC property in the file's XMP, put into PNG,
JPEG and WebP files as Pillow encodes them, without touching a pixel, and found again both by
our reader and by Pillow's own XMP reading (a reader that is not ours)."""

from __future__ import annotations

import io
import json
import random
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass
from typing import Any

import pytest
from PIL import Image

from imagegate.labels.aigc import AigcLabel
from imagegate.labels.containers import (
    MAX_JPEG_PACKET,
    embed_aigc,
    read_xmp,
    sniff_format,
    upstream_aigc,
    write_xmp,
)
from imagegate.labels.errors import LabelError
from imagegate.labels.inspect import inspect_file
from imagegate.labels.xmp import IMAGEGATE_NS, TC260_NS, aigc_packet, read_aigc, read_extra

PRODUCER = "北京某某科技有限公司"
LABEL = AigcLabel(content_producer=PRODUCER, produce_id="img_0001")
NEW_LABEL = AigcLabel(content_producer=PRODUCER, produce_id="img_0002",
                      content_propagator="imagegate.example", propagate_id="link_42")

DC = "http://purl.org/dc/elements/1.1/"
IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
UPSTREAM_PACKET = f"""<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:dc="{DC}" xmlns:Iptc4xmpExt="{IPTC_EXT}"
    Iptc4xmpExt:DigitalSourceType="{TRAINED}">
   <dc:title><rdf:Alt>
    <rdf:li xml:lang="x-default">Upstream &amp; title</rdf:li>
   </rdf:Alt></dc:title>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>"""


@dataclass(frozen=True)
class Case:
    name: str
    fmt: str
    mode: str
    options: dict[str, Any]


CASES = [
    Case("png-rgb", "PNG", "RGB", {}),
    Case("png-rgba", "PNG", "RGBA", {}),
    Case("jpeg", "JPEG", "RGB", {"quality": 90}),
    Case("jpeg-progressive", "JPEG", "RGB", {"quality": 90, "progressive": True}),
    Case("webp-lossy", "WEBP", "RGB", {"quality": 80}),  # simple file: VP8
    Case("webp-lossy-alpha", "WEBP", "RGBA", {"quality": 80}),  # extended already: VP8X, ALPH
    Case("webp-lossless", "WEBP", "RGB", {"lossless": True}),  # simple file: VP8L
    Case("webp-lossless-alpha", "WEBP", "RGBA", {"lossless": True}),  # VP8L, alpha bit set
]


def _image(mode: str, size: tuple[int, int] = (67, 45), seed: int = 7) -> Image.Image:
    """Noise over a gradient: what generated images look like to an encoder. Odd sizes catch
    off-by-one canvas sizes; RGBA gets a real alpha channel."""
    width, height = size
    rng = random.Random(seed)
    pixels = bytearray()
    for y in range(height):
        for x in range(width):
            pixels += bytes((x * 255 // width + rng.randrange(-20, 20)) % 256
                            for _ in range(3))
            if mode == "RGBA":
                pixels.append(255 if (x + y) % 7 else rng.randrange(0, 128))
    return Image.frombytes(mode, size, bytes(pixels))


def _encode(case: Case) -> bytes:
    buf = io.BytesIO()
    _image(case.mode).save(buf, case.fmt, **case.options)
    return buf.getvalue()


def _decoded(data: bytes) -> tuple[str, tuple[int, int], bytes]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.mode, image.size, image.tobytes()


def _aigc_values(tree: Any) -> list[str]:
    """Every AIGC value in Pillow's getxmp() dictionary, wherever it sits."""
    if isinstance(tree, dict):
        found = []
        for key, value in tree.items():
            if key == "AIGC":
                found += value if isinstance(value, list) else [value]
            else:
                found += _aigc_values(value)
        return found
    if isinstance(tree, list):
        return [v for item in tree for v in _aigc_values(item)]
    return []


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes, int]]:
    """(type, body, stored CRC) of every chunk, walked independently of the code under test."""
    chunks, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        chunks.append((kind, body, int.from_bytes(data[pos + 8 + length:pos + 12 + length], "big")))
        pos += 12 + length
    return chunks


def _riff_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 12
    while pos < len(data):
        size = int.from_bytes(data[pos + 4:pos + 8], "little")
        chunks.append((data[pos:pos + 4], data[pos + 8:pos + 8 + size]))
        pos += 8 + size + (size & 1)
    assert pos == len(data)
    return chunks


@pytest.fixture(params=CASES, ids=[case.name for case in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param  # type: ignore[no-any-return]


# --- The label in each format ---------------------------------------------------------------


def test_pixels_are_untouched_and_the_one_label_reads_back(case: Case) -> None:
    original = _encode(case)
    labelled = embed_aigc(original, LABEL)
    assert _decoded(labelled) == _decoded(original)
    packet = read_xmp(labelled)
    assert packet is not None
    assert read_aigc(packet) == [LABEL]
    assert upstream_aigc(labelled) == LABEL
    assert upstream_aigc(original) is None


def test_labelling_again_leaves_only_the_new_label(case: Case) -> None:
    original = _encode(case)
    twice = embed_aigc(embed_aigc(original, LABEL), NEW_LABEL)
    packet = read_xmp(twice)
    assert packet is not None and read_aigc(packet) == [NEW_LABEL]
    assert packet.count("AIGC>") == 2  # one element: its start and end tag
    assert _decoded(twice) == _decoded(original)
    # Same length as labelling once with the new label: nothing accumulates.
    assert len(twice) == len(embed_aigc(original, NEW_LABEL))


def test_another_writers_metadata_is_kept(case: Case) -> None:
    upstream = write_xmp(_encode(case), UPSTREAM_PACKET)
    labelled = embed_aigc(upstream, LABEL)
    packet = read_xmp(labelled)
    assert packet is not None
    root = ET.fromstring(packet.strip())
    title = root.find(f".//{{{DC}}}title//{{http://www.w3.org/1999/02/22-rdf-syntax-ns#}}li")
    assert title is not None and title.text == "Upstream & title"
    sources = [d.get(f"{{{IPTC_EXT}}}DigitalSourceType") for d in root.iter()
               if d.get(f"{{{IPTC_EXT}}}DigitalSourceType")]
    assert sources == [TRAINED]
    assert 'xmlns:Iptc4xmpExt=' in packet and "<dc:title>" in packet  # prefixes as written
    assert read_aigc(packet) == [LABEL]
    assert _decoded(labelled) == _decoded(upstream)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_packet_pillow_wrote_is_replaced_not_doubled(fmt: str) -> None:
    # The upstream's packet written by another writer (Pillow's own XMP support).
    from PIL.PngImagePlugin import PngInfo

    buf = io.BytesIO()
    if fmt == "PNG":
        info = PngInfo()
        info.add_itxt("XML:com.adobe.xmp", UPSTREAM_PACKET)
        _image("RGB").save(buf, fmt, pnginfo=info)
    else:
        _image("RGB").save(buf, fmt, xmp=UPSTREAM_PACKET.encode())
    upstream = buf.getvalue()
    labelled = embed_aigc(upstream, LABEL)
    assert labelled.count(b"W5M0MpCehiHzreSzNTczkc9d") == 1
    assert labelled.count(b"Upstream &amp; title") == 1
    packet = read_xmp(labelled)
    assert packet is not None and read_aigc(packet) == [LABEL]
    assert _decoded(labelled) == _decoded(upstream)


def test_the_container_stays_well_formed(case: Case) -> None:
    original = _encode(case)
    labelled = embed_aigc(original, LABEL)
    with Image.open(io.BytesIO(labelled)) as image:
        image.verify()
    if case.fmt == "PNG":
        chunks = _png_chunks(labelled)
        for kind, body, crc in chunks:
            assert zlib.crc32(body, zlib.crc32(kind)) == crc, kind
        kinds = [kind for kind, _, _ in chunks]
        xmp = [i for i, (kind, body, _) in enumerate(chunks)
               if kind == b"iTXt" and body.startswith(b"XML:com.adobe.xmp\x00")]
        assert xmp == [1]  # right after IHDR, before the image data
        assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
        # uncompressed, no language, no translated keyword
        assert chunks[1][1].startswith(b"XML:com.adobe.xmp\x00\x00\x00\x00\x00<?xpacket")
    elif case.fmt == "JPEG":
        assert labelled[:2] == b"\xff\xd8" and labelled[2:4] == b"\xff\xe0"  # JFIF first
        app0_end = 4 + int.from_bytes(labelled[4:6], "big")
        assert labelled[app0_end:app0_end + 2] == b"\xff\xe1"
        assert labelled[app0_end + 4:app0_end + 33] == b"http://ns.adobe.com/xap/1.0/\x00"
        assert labelled.endswith(b"\xff\xd9")
    else:
        assert int.from_bytes(labelled[4:8], "little") == len(labelled) - 8
        chunks = _riff_chunks(labelled)
        kind, vp8x = chunks[0]
        assert kind == b"VP8X"
        assert vp8x[0] & 0x04  # XMP
        assert bool(vp8x[0] & 0x10) == (case.mode == "RGBA")  # alpha
        width = int.from_bytes(vp8x[4:7], "little") + 1
        height = int.from_bytes(vp8x[7:10], "little") + 1
        assert (width, height) == (67, 45)
        assert [k for k, _ in chunks].count(b"XMP ") == 1 and chunks[-1][0] == b"XMP "


def test_chinese_names_round_trip_as_written(case: Case) -> None:
    label = AigcLabel(content_producer="上海人工智能有限公司", produce_id="编号-1",
                      content_propagator="某平台", propagate_id="传播-2")
    labelled = embed_aigc(_encode(case), label)
    assert upstream_aigc(labelled) == label
    assert "上海人工智能有限公司".encode() in labelled  # UTF-8 in the file, not \u escapes


# --- A reader that is not ours ---------------------------------------------------------------


def test_pillow_reads_the_packet_and_the_label(case: Case) -> None:
    pytest.importorskip("defusedxml")  # what Pillow's getxmp() needs (the dev extra has it)
    labelled = embed_aigc(_encode(case), LABEL, extra={"VisibleMark": "AI生成"})
    with Image.open(io.BytesIO(labelled)) as image:
        raw = image.info["XML:com.adobe.xmp" if case.fmt == "PNG" else "xmp"]
        text = raw if isinstance(raw, str) else raw.decode("utf-8")
        assert TC260_NS in text
        values = _aigc_values(image.getxmp())
    assert len(values) == 1
    assert json.loads(values[0]) == LABEL.as_dict()
    assert list(json.loads(values[0])) == ["Label", "ContentProducer", "ProduceID",
                                          "ReservedCode1", "ContentPropagator", "PropagateID",
                                          "ReservedCode2"]


# --- The label and the packet -----------------------------------------------------------------


def test_the_label_json_is_the_standards() -> None:
    assert LABEL.to_json() == (
        '{"Label":"1","ContentProducer":"北京某某科技有限公司","ProduceID":"img_0001",'
        '"ReservedCode1":"","ContentPropagator":"","PropagateID":"","ReservedCode2":""}')
    assert AigcLabel.from_json(LABEL.to_json()) == LABEL
    # Another writer's: a number for Label, keys missing or null, a key we do not know.
    assert AigcLabel.from_json('{"Label":1,"ContentProducer":"x","ReservedCode1":null,"Z":2}') \
        == AigcLabel(content_producer="x", produce_id="", label="1")


@pytest.mark.parametrize("text", ["", "[]", '"1"', '{"ContentProducer":"x"}',
                                  '{"Label":"1","ProduceID":{"a":1}}', '{"Label":true}'])
def test_what_is_not_an_aigc_object_is_refused(text: str) -> None:
    with pytest.raises(LabelError):
        AigcLabel.from_json(text)


def test_values_are_escaped_not_pasted_into_the_markup() -> None:
    hostile = AigcLabel(content_producer='</TC260:AIGC><x a="1">&amp;]]>', produce_id="'\"<>&")
    packet = aigc_packet(hostile, extra={"VisibleMark": "</imagegate:VisibleMark><evil/>"})
    ET.fromstring(packet.strip())  # still XML
    assert read_aigc(packet) == [hostile]
    assert read_extra(packet) == {"VisibleMark": "</imagegate:VisibleMark><evil/>"}


def test_every_existing_aigc_property_is_replaced_by_ours() -> None:
    # An attribute, an element, and a writer that dropped the namespace's final slash.
    existing = f"""<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF
      xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
      <rdf:Description rdf:about="" xmlns:T="{TC260_NS}" T:AIGC='{{"Label":"2"}}'/>
      <rdf:Description rdf:about="" xmlns:TC260="{TC260_NS}" xmlns:dc="{DC}">
        <TC260:AIGC>{{"Label":"3","ContentProducer":"up"}}</TC260:AIGC><dc:format>image/png</dc:format>
      </rdf:Description>
      <rdf:Description rdf:about="" xmlns:TC260="{TC260_NS.rstrip('/')}">
        <TC260:AIGC>{{"Label":"1"}}</TC260:AIGC></rdf:Description>
    </rdf:RDF></x:xmpmeta>"""
    assert len(read_aigc(existing)) == 3
    packet = aigc_packet(LABEL, existing=existing)
    assert read_aigc(packet) == [LABEL]
    assert "<dc:format>image/png</dc:format>" in packet
    assert packet.count("<rdf:Description") == 2  # the emptied ones are gone, dc's stays


def test_a_prefix_bound_elsewhere_does_not_capture_ours() -> None:
    existing = """<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF
      xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns:TC260="urn:other">
      <rdf:Description rdf:about=""><TC260:AIGC>not ours</TC260:AIGC></rdf:Description>
    </rdf:RDF></x:xmpmeta>"""
    packet = aigc_packet(LABEL, existing=existing)
    assert read_aigc(packet) == [LABEL]
    assert "<TC260:AIGC>not ours</TC260:AIGC>" in packet  # another namespace's: kept


@pytest.mark.parametrize("existing", [
    "<not xml",
    "<x:xmpmeta xmlns:x='adobe:ns:meta/'/>",  # no rdf:RDF
    '<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">&b;</rdf:RDF></x:xmpmeta>',
])
def test_an_unreadable_packet_is_replaced_and_not_read(existing: str) -> None:
    packet = aigc_packet(LABEL, existing=existing)
    assert read_aigc(packet) == [LABEL]
    assert "aaaa" not in packet
    with pytest.raises(LabelError):
        read_aigc(existing)


def test_imagegate_properties_are_recorded_and_replaced() -> None:
    first = aigc_packet(LABEL, extra={"VisibleMark": "AI生成", "Model": "sd"})
    assert read_extra(first) == {"VisibleMark": "AI生成", "Model": "sd"}
    again = aigc_packet(NEW_LABEL, existing=first, extra={"VisibleMark": "AI generated"})
    assert read_extra(again) == {"VisibleMark": "AI generated", "Model": "sd"}
    assert IMAGEGATE_NS in again
    with pytest.raises(LabelError):
        aigc_packet(LABEL, extra={"not a name": "x"})
    with pytest.raises(LabelError):
        aigc_packet(LABEL, extra={"VisibleMark": "\x00"})


def test_a_jpeg_packet_must_fit_one_segment() -> None:
    jpeg = _encode(CASES[2])
    filler = "x" * (MAX_JPEG_PACKET - 1)
    assert read_xmp(write_xmp(jpeg, filler + "y")) == filler + "y"
    with pytest.raises(LabelError):
        write_xmp(jpeg, filler + "yy")


def test_xmp_goes_after_exif_in_a_jpeg() -> None:
    exif = Image.Exif()
    exif[0x0131] = "some camera software"  # Software
    buf = io.BytesIO()
    _image("RGB").save(buf, "JPEG", exif=exif)
    labelled = embed_aigc(buf.getvalue(), LABEL)
    assert labelled.index(b"Exif\x00\x00") < labelled.index(b"http://ns.adobe.com/xap/1.0/")
    with Image.open(io.BytesIO(labelled)) as image:
        assert image.getexif()[0x0131] == "some camera software"
    assert _decoded(labelled) == _decoded(buf.getvalue())


def test_an_animated_webp_keeps_its_frames() -> None:
    frames = [_image("RGB", seed=seed) for seed in (1, 2)]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    labelled = embed_aigc(buf.getvalue(), LABEL)
    assert upstream_aigc(labelled) == LABEL
    with Image.open(io.BytesIO(labelled)) as image:
        assert image.n_frames == 2


# --- What is not a file we can label ----------------------------------------------------------


def _gif() -> bytes:
    buf = io.BytesIO()
    _image("RGB").save(buf, "GIF")
    return buf.getvalue()


@pytest.mark.parametrize("name", ["text", "gif", "empty"])
def test_other_files_are_refused(name: str) -> None:
    data = {"text": b"hello, not an image at all", "gif": _gif(), "empty": b""}[name]
    assert sniff_format(data) is None
    for call in (lambda: embed_aigc(data, LABEL), lambda: read_xmp(data),
                 lambda: write_xmp(data, "x"), lambda: inspect_file(data),
                 lambda: upstream_aigc(data)):
        with pytest.raises(LabelError):
            call()


def test_a_file_cut_short_is_refused(case: Case) -> None:
    data = _encode(case)
    for length in (len(data) - 1, len(data) // 2, 40, 13):
        cut = data[:length]
        for call in (lambda: embed_aigc(cut, LABEL), lambda: read_xmp(cut),
                     lambda: inspect_file(cut)):
            with pytest.raises(LabelError):
                call()


def test_a_damaged_header_is_a_label_error_or_nothing(case: Case) -> None:
    # Every byte of the first 64 changed in turn: the container walk and Pillow's header read
    # may refuse it, but only as a LabelError.
    data = embed_aigc(_encode(case), LABEL)
    for at in range(64):
        damaged = data[:at] + bytes([data[at] ^ 0xA5]) + data[at + 1:]
        for call in (lambda: embed_aigc(damaged, NEW_LABEL), lambda: inspect_file(damaged)):
            try:
                call()
            except LabelError:
                pass


# --- What `imagegate verify` reports ------------------------------------------------------------


def test_inspect_reports_the_label(case: Case) -> None:
    labelled = embed_aigc(_encode(case), LABEL, extra={"VisibleMark": "AI生成"})
    report = inspect_file(labelled)
    assert report == {
        "format": {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}[case.fmt],
        "width": 67, "height": 45,
        "implicit_labels": [LABEL.as_dict()], "implicit_label_count": 1,
        "xmp": True, "xmp_error": None, "extra": {"VisibleMark": "AI生成"},
        "visible_mark": "AI生成", "credentials": None, "credentials_error": None,
    }


def test_inspect_says_when_there_is_no_label() -> None:
    report = inspect_file(_encode(CASES[0]))
    assert report["implicit_labels"] == [] and report["implicit_label_count"] == 0
    assert report["xmp"] is False and report["extra"] == {} and report["credentials"] is None
    assert report["visible_mark"] is None
    upstream = inspect_file(write_xmp(_encode(CASES[0]), UPSTREAM_PACKET))
    assert upstream["xmp"] is True and upstream["implicit_label_count"] == 0


def test_inspect_says_when_the_packet_is_unreadable() -> None:
    report = inspect_file(write_xmp(_encode(CASES[2]), "<not xml"))
    assert report["xmp"] is True and report["implicit_label_count"] == 0
    assert report["xmp_error"]
