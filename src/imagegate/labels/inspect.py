"""What a file says about itself: the report behind `imagegate verify` and its endpoint.

An operator answering a regulator or a platform needs every label a file carries, read the way
an outside reader would read it, and a plain statement when there is none: the implicit
label(s) from the XMP packet, imagegate's own notes beside them (such as the visible mark it
drew), and the C2PA credentials (credentials.py). Nothing is decoded beyond the header that
gives the size.
"""

from __future__ import annotations

import io
import struct
from typing import Any

from PIL import Image

from .containers import read_xmp, sniff_format
from .credentials import read_credentials
from .errors import LabelError
from .xmp import read_aigc, read_extra


def inspect_file(data: bytes, *, trust_anchors: bytes | None = None) -> dict[str, Any]:
    """The file's format, size and labels. LabelError when it is not a PNG, JPEG or WebP
    file, or is cut short.

    Keys: format, width, height; implicit_labels (each as the standard's fields) and
    implicit_label_count (GB 45438-2025 wants exactly one); xmp (whether there is a packet at
    all), xmp_error (why a packet that is there could not be read, else None), extra (the
    imagegate-namespace properties) and visible_mark (the text of the visible mark imagegate
    recorded drawing, else None); credentials (read_credentials' report, None when the file
    has no manifest) and credentials_error (why a manifest that is there could not be read,
    such as c2pa-python not being installed, else None). `trust_anchors` are passed to
    read_credentials.
    """
    packet = read_xmp(data)  # checks the format and the container's structure first
    width, height = _size(data)
    labels: list[dict[str, str]] = []
    extra: dict[str, str] = {}
    xmp_error = None
    if packet is not None:
        try:
            labels = [label.as_dict() for label in read_aigc(packet)]
            extra = read_extra(packet)
        except LabelError as exc:
            xmp_error = str(exc)
    credentials, credentials_error = _credentials(data, trust_anchors)
    return {
        "format": sniff_format(data),
        "width": width,
        "height": height,
        "implicit_labels": labels,
        "implicit_label_count": len(labels),
        "xmp": packet is not None,
        "xmp_error": xmp_error,
        "extra": extra,
        "visible_mark": extra.get("VisibleMark"),
        "credentials": credentials,
        "credentials_error": credentials_error,
    }


def _size(data: bytes) -> tuple[int, int]:
    """The size from the header (Pillow opens lazily: no pixel is decoded here)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError, EOFError, struct.error,
            Image.DecompressionBombError) as exc:
        raise LabelError(f"the image cannot be read: {exc}") from None
    return width, height


def _credentials(data: bytes, trust_anchors: bytes | None
                 ) -> tuple[dict[str, Any] | None, str | None]:
    # A manifest that cannot be read (no c2pa-python here) is said, not allowed to hide the
    # implicit label's report.
    try:
        return read_credentials(data, trust_anchors=trust_anchors), None
    except LabelError as exc:
        return None, str(exc)
