"""What the service and the media route may ask of any store, whatever holds the bytes.

A store keeps write-once byte objects under names it mints, for `ttl_seconds`, then sweeps them.
The image store is one; the answers replayed for an `Idempotency-Key` are kept in another, so an
image store holds images only. local.py keeps them in a folder, s3.py in a bucket;
backends.py picks one by the settings.

The methods block (disk or network I/O): callers on the event loop run them in a thread.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import APIError, NotFound

IMAGE_TYPES: Mapping[str, str] = {"png": "image/png", "jpeg": "image/jpeg",
                                  "webp": "image/webp"}
"""Extension -> media type of what an image store keeps."""
ANSWER_TYPES: Mapping[str, str] = {"json": "application/json"}
"""... and of what the answer store keeps."""

# Names are minted here and only ever matched against this pattern (and the store's own
# extensions) before a backend is asked, so a request path can never reach outside a store:
# no '/', no '..', no other extension.
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{22,64}\.(?P<ext>[a-z]{1,8})")


def mint_name(ext: str) -> str:
    """A new unguessable name: 144 random bits, URL-safe, plus the extension."""
    return f"{secrets.token_urlsafe(18)}.{ext}"


def check_name(name: str, types: Mapping[str, str]) -> str:
    """`name`'s media type; 404 unless it is a name this store could have minted."""
    match = _NAME_RE.fullmatch(name)
    if match is None or match["ext"] not in types:
        raise NotFound("No such image.")
    return types[match["ext"]]


class StorageUnavailable(APIError):
    """503: a store over the network failed (unreachable, refused); the message stays
    generic, the cause goes to the log."""

    status = 503
    type = "server_error"
    code = "storage_unavailable"


@dataclass(frozen=True)
class OpenedImage:
    """A stored object, ready to be served."""

    name: str
    media_type: str
    size: int
    chunks: Iterator[bytes]
    """The bytes, read lazily: nothing is read until the first chunk is asked for, so a link
    that fails its signature check costs no read. Blocking, like the store's methods (Starlette
    reads a plain iterator in a thread)."""
    path: Path | None = None
    """Set only by a store on the local disk: the file, for `FileResponse` (sendfile, ranges)."""


class BlobStore(Protocol):
    """Objects under minted names, kept for `ttl_seconds` after they are written."""

    ttl_seconds: int

    def put(self, data: bytes, ext: str, name: str | None = None) -> str:
        """Keep `data` under a new name ending in `.ext` (`name`: one minted beforehand with
        `mint_name`, so the file can say where it is hosted); readers never see half of it."""
        ...

    def read(self, name: str) -> bytes:
        """The whole object; `NotFound` for an unknown, swept or malformed name."""
        ...

    def delete(self, name: str) -> None:
        """Remove the object if it is there (a name already gone is not an error)."""
        ...

    def sweep(self, now: float | None = None) -> int:
        """Remove what is older than `ttl_seconds` (plus a second of grace, so nothing goes
        while a link to it still verifies) and stale partial writes; how many went."""
        ...


class ImageStore(BlobStore, Protocol):
    """Generated images, served by `GET /v1/media/{name}` behind a signed link."""

    def open(self, name: str) -> OpenedImage:
        """The image's type, size and bytes; `NotFound` for an unknown, swept or malformed
        name (checked before anything else)."""
        ...
