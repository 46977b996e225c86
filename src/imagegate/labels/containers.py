"""An XMP packet put into, and read from, a PNG, JPEG or WebP file without touching its pixels.

Labelling must not cost a re-encode (time, and for JPEG and lossy WebP a second generation of
loss, and for a relayed file the upstream's own bytes), so this is byte surgery on the
container: the file's chunks or segments are walked, the XMP one is replaced or added where
each format's XMP specification puts it, and everything else is copied as it was. Files come
from upstreams too, so every length is checked against the data before it is trusted, and a
file that is cut short or not one of the three formats is a LabelError.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from .aigc import AigcLabel
from .errors import LabelError
from .xmp import aigc_packet, read_aigc

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_XMP_KEYWORD = b"XML:com.adobe.xmp"
JPEG_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
MAX_JPEG_PACKET = 65502
"""The largest packet one APP1 segment holds, as the XMP specification (part 3) gives it."""
MAX_INFLATED_PACKET = 16 << 20
"""A compressed PNG packet is inflated up to this and no further (a zip bomb is not XMP)."""

_VP8X_XMP = 0x04
_VP8X_ALPHA = 0x10


def sniff_format(data: bytes) -> str | None:
    """"png", "jpeg" or "webp" from the file's first bytes; None for anything else."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def read_xmp(data: bytes) -> str | None:
    """The file's XMP packet as text; None when it has none."""
    fmt = _format(data)
    if fmt == "png":
        raw = _png_read(data)
    elif fmt == "jpeg":
        raw = _jpeg_read(data)
    else:
        raw = _webp_read(data)
    return None if raw is None else _decode(raw)


def write_xmp(data: bytes, packet: str) -> bytes:
    """The file with `packet` as its one XMP packet (the old one replaced, or a new one added)."""
    fmt = _format(data)
    try:
        raw = packet.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LabelError(f"the XMP packet cannot be written as UTF-8: {exc.reason}") from None
    if fmt == "png":
        return _png_write(data, raw)
    if fmt == "jpeg":
        return _jpeg_write(data, raw)
    return _webp_write(data, raw)


def embed_aigc(data: bytes, label: AigcLabel, *, extra: dict[str, str] | None = None) -> bytes:
    """The file with `label` as its one AIGC label, the rest of its XMP kept; pixels untouched."""
    return write_xmp(data, aigc_packet(label, existing=read_xmp(data), extra=extra))


def upstream_aigc(data: bytes) -> AigcLabel | None:
    """The AIGC label a received file already carries (the first, should it hold several);
    None when it has none, or XMP too broken to read one from. LabelError, as everywhere here,
    when the file itself is not a PNG, JPEG or WebP file or is cut short."""
    packet = read_xmp(data)
    if packet is None:
        return None
    try:
        labels = read_aigc(packet)
    except LabelError:
        return None
    return labels[0] if labels else None


def _format(data: bytes) -> str:
    fmt = sniff_format(data)
    if fmt is None:
        raise LabelError("not a PNG, JPEG or WebP file")
    return fmt


def _decode(raw: bytes) -> str:
    """XMP is UTF-8 (UTF-16 with a byte order mark is allowed); bytes that are neither become
    U+FFFD rather than a failure, so the rest of the packet stays readable."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16", "replace")
    return raw.decode("utf-8", "replace")


def _cut_short(fmt: str) -> LabelError:
    return LabelError(f"the {fmt} file is cut short or corrupt")


@dataclass(frozen=True)
class _Part:
    """One chunk or segment: its kind, where it starts and ends in the file (header and any
    padding included), and where its payload lies."""

    kind: bytes
    start: int
    end: int
    body_start: int
    body_end: int


# --- PNG: an iTXt chunk keyed XML:com.adobe.xmp, before the image data --------------------


def _png_chunks(data: bytes) -> list[_Part]:
    chunks: list[_Part] = []
    pos = len(PNG_SIGNATURE)
    while not chunks or chunks[-1].kind != b"IEND":
        if pos + 12 > len(data):
            raise _cut_short("PNG")
        length = int.from_bytes(data[pos:pos + 4], "big")
        end = pos + 12 + length
        if length >= 1 << 31 or end > len(data):
            raise _cut_short("PNG")
        chunks.append(_Part(data[pos + 4:pos + 8], pos, end, pos + 8, end - 4))
        pos = end
    if chunks[0].kind != b"IHDR" or not any(chunk.kind == b"IDAT" for chunk in chunks):
        raise _cut_short("PNG")
    return chunks


def _is_png_xmp(data: bytes, chunk: _Part) -> bool:
    return chunk.kind == b"iTXt" and data.startswith(PNG_XMP_KEYWORD + b"\x00", chunk.body_start)


def _png_read(data: bytes) -> bytes | None:
    chunk = next((c for c in _png_chunks(data) if _is_png_xmp(data, c)), None)
    if chunk is None:
        return None
    # keyword \0, compression flag, compression method, language \0, translated keyword \0
    body = data[chunk.body_start + len(PNG_XMP_KEYWORD) + 1:chunk.body_end]
    if len(body) < 2:
        raise _cut_short("PNG")
    compressed = body[0] == 1
    parts = body[2:].split(b"\x00", 2)
    if len(parts) != 3:
        raise _cut_short("PNG")
    if not compressed:
        return parts[2]
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(parts[2], MAX_INFLATED_PACKET)
    except zlib.error:
        raise _cut_short("PNG") from None
    if inflater.unconsumed_tail:
        raise LabelError("the PNG's compressed XMP packet is larger than 16 MiB")
    return text


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(body, zlib.crc32(kind))
    return len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")


def _png_write(data: bytes, raw: bytes) -> bytes:
    # Uncompressed, with no language: the form every XMP reader handles.
    ours = _png_chunk(b"iTXt", PNG_XMP_KEYWORD + b"\x00\x00\x00\x00\x00" + raw)
    chunks = _png_chunks(data)
    first_idat = next(i for i, chunk in enumerate(chunks) if chunk.kind == b"IDAT")
    xmp = [i for i, chunk in enumerate(chunks) if _is_png_xmp(data, chunk)]
    # In place of the old packet when that came before the image data (readers that stop at
    # IDAT see it there); otherwise right after IHDR.
    at = xmp[0] if xmp and xmp[0] < first_idat else 0
    view = memoryview(data)  # slices of it are not copies: the file is copied once, by join
    out: list[bytes | memoryview] = [PNG_SIGNATURE]
    for i, chunk in enumerate(chunks):
        if i not in xmp:
            out.append(view[chunk.start:chunk.end])
        if i == at:
            out.append(ours)
    out.append(view[chunks[-1].end:])  # anything after IEND stays as it was
    return b"".join(out)


# --- JPEG: an APP1 segment with Adobe's XMP namespace, after JFIF and Exif ------------------


def _jpeg_segments(data: bytes) -> tuple[list[_Part], int]:
    """The segments before the first scan, and where the scan (SOS) starts."""
    segments: list[_Part] = []
    pos = 2
    while True:
        if pos >= len(data) or data[pos] != 0xFF:
            raise _cut_short("JPEG")
        at = pos
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes may pad a marker
            pos += 1
        if pos + 3 > len(data):
            raise _cut_short("JPEG")
        marker = data[pos]
        if marker == 0xDA:
            break
        if marker in (0xD8, 0xD9) or 0xD0 <= marker <= 0xD7 or marker in (0x00, 0x01):
            raise _cut_short("JPEG")  # no standalone marker belongs between SOI and SOS
        length = int.from_bytes(data[pos + 1:pos + 3], "big")
        end = pos + 1 + length
        if length < 2 or end > len(data):
            raise _cut_short("JPEG")
        segments.append(_Part(bytes([marker]), at, end, pos + 3, end))
        pos = end
    # Entropy-coded data never holds FF D9, so an image that was cut short has no EOI after
    # its first scan.
    if data.rfind(b"\xff\xd9") < pos:
        raise _cut_short("JPEG")
    return segments, at


def _is_jpeg_xmp(data: bytes, segment: _Part) -> bool:
    return segment.kind == b"\xe1" and data.startswith(JPEG_XMP_HEADER, segment.body_start)


def _jpeg_read(data: bytes) -> bytes | None:
    segments, _ = _jpeg_segments(data)
    segment = next((s for s in segments if _is_jpeg_xmp(data, s)), None)
    if segment is None:
        return None
    return data[segment.body_start + len(JPEG_XMP_HEADER):segment.body_end]


def _jpeg_write(data: bytes, raw: bytes) -> bytes:
    if len(raw) > MAX_JPEG_PACKET:
        raise LabelError(f"an XMP packet of {len(raw)} bytes does not fit a JPEG APP1 segment")
    ours = (b"\xff\xe1" + (2 + len(JPEG_XMP_HEADER) + len(raw)).to_bytes(2, "big")
            + JPEG_XMP_HEADER + raw)
    segments, scan = _jpeg_segments(data)
    xmp = [i for i, segment in enumerate(segments) if _is_jpeg_xmp(data, segment)]
    if xmp:
        at = xmp[0]
    else:
        # After JFIF (APP0) and Exif (APP1), which readers expect right after SOI.
        at = -1
        while at + 1 < len(segments) and (
                segments[at + 1].kind == b"\xe0"
                or (segments[at + 1].kind == b"\xe1"
                    and data.startswith(b"Exif\x00", segments[at + 1].body_start))):
            at += 1
    out = [data[:2]]
    if at == -1:
        out.append(ours)
    for i, segment in enumerate(segments):
        if i not in xmp:
            out.append(data[segment.start:segment.end])
        if i == at:
            out.append(ours)
    out.append(data[scan:])
    return b"".join(out)


# --- WebP: an "XMP " chunk, announced by the extended header (VP8X) -------------------------


def _webp_chunks(data: bytes) -> list[_Part]:
    riff_end = 8 + int.from_bytes(data[4:8], "little")
    if riff_end > len(data):
        raise _cut_short("WebP")
    chunks: list[_Part] = []
    pos = 12
    while pos < riff_end:
        if pos + 8 > riff_end:
            raise _cut_short("WebP")
        size = int.from_bytes(data[pos + 4:pos + 8], "little")
        end = pos + 8 + size + (size & 1)
        if end > riff_end:
            raise _cut_short("WebP")
        chunks.append(_Part(data[pos:pos + 4], pos, end, pos + 8, pos + 8 + size))
        pos = end
    if not chunks or chunks[0].kind not in (b"VP8X", b"VP8 ", b"VP8L"):
        raise _cut_short("WebP")
    if chunks[0].kind == b"VP8X" and chunks[0].body_end - chunks[0].body_start < 10:
        raise _cut_short("WebP")
    return chunks


def _webp_read(data: bytes) -> bytes | None:
    chunk = next((c for c in _webp_chunks(data) if c.kind == b"XMP "), None)
    return None if chunk is None else data[chunk.body_start:chunk.body_end]


def _webp_chunk(kind: bytes, body: bytes) -> bytes:
    return kind + len(body).to_bytes(4, "little") + body + b"\x00" * (len(body) & 1)


def _webp_canvas(data: bytes, chunk: _Part) -> tuple[int, int, bool]:
    """Width, height and whether alpha is used, from a simple file's VP8 or VP8L header."""
    body = data[chunk.body_start:chunk.body_end]
    if chunk.kind == b"VP8 ":
        # frame tag (3 bytes, bit 0 clear on a key frame), start code, 14-bit sizes
        if len(body) < 10 or body[0] & 1 or body[3:6] != b"\x9d\x01\x2a":
            raise _cut_short("WebP")
        width = int.from_bytes(body[6:8], "little") & 0x3FFF
        height = int.from_bytes(body[8:10], "little") & 0x3FFF
        return width, height, False
    # VP8L: signature 0x2f, then width-1 and height-1 in 14 bits each, then the alpha bit
    if len(body) < 5 or body[0] != 0x2F:
        raise _cut_short("WebP")
    bits = int.from_bytes(body[1:5], "little")
    return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool(bits >> 28 & 1)


def _webp_write(data: bytes, raw: bytes) -> bytes:
    chunks = _webp_chunks(data)
    ours = _webp_chunk(b"XMP ", raw)
    head = chunks[0]
    if head.kind == b"VP8X":
        body = data[head.body_start:head.body_end]
        vp8x = _webp_chunk(b"VP8X", bytes([body[0] | _VP8X_XMP]) + body[1:])
        rest = chunks[1:]
    else:
        # A simple file has no place for metadata: it becomes an extended one, whose header
        # repeats the canvas size the bitstream gives.
        width, height, alpha = _webp_canvas(data, head)
        flags = _VP8X_XMP | (_VP8X_ALPHA if alpha else 0)
        vp8x = _webp_chunk(b"VP8X", bytes([flags, 0, 0, 0]) + (width - 1).to_bytes(3, "little")
                           + (height - 1).to_bytes(3, "little"))
        rest = chunks
    out = [vp8x]
    placed = False
    for chunk in rest:
        if chunk.kind != b"XMP ":
            out.append(data[chunk.start:chunk.end])
        elif not placed:
            out.append(ours)
            placed = True
    if not placed:
        out.append(ours)
    body = b"".join(out)
    # Bytes past the RIFF size are no part of the file and are not carried over.
    return b"RIFF" + (len(body) + 4).to_bytes(4, "little") + b"WEBP" + body
