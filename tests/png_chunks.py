"""PNG files compared as images, apart from the metadata imagegate adds: a relayed PNG passed
on as is differs from the upstream's only by the XMP chunk that holds its AI-content labels
(docs/labels.md), and two answers for the same seed only by that chunk's ProduceID."""

from __future__ import annotations

import struct

SIGNATURE = b"\x89PNG\r\n\x1a\n"
XMP_KEYWORD = b"XML:com.adobe.xmp\x00"


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """Every chunk as (type, data), in order."""
    assert png.startswith(SIGNATURE), "not a PNG"
    out, at = [], len(SIGNATURE)
    while at < len(png):
        (length,) = struct.unpack(">I", png[at:at + 4])
        kind = png[at + 4:at + 8]
        out.append((kind, png[at + 8:at + 8 + length]))
        at += 12 + length
    return out


def image_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """The chunks without the XMP packet (where the labels are)."""
    return [(kind, data) for kind, data in chunks(png)
            if not (kind == b"iTXt" and data.startswith(XMP_KEYWORD))]


def passed_on(delivered: bytes, original: bytes) -> bool:
    """`delivered` is `original` with only its labels' XMP chunk added."""
    xmp = [data for kind, data in chunks(delivered)
           if kind == b"iTXt" and data.startswith(XMP_KEYWORD)]
    return len(xmp) == 1 and image_chunks(delivered) == chunks(original)
