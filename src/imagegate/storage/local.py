"""A store in a folder on the local disk, swept when its objects expire."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from ..errors import NotFound
from .base import IMAGE_TYPES, OpenedImage, check_name, mint_name

CHUNK_BYTES = 256 * 1024


class LocalStore:
    """One flat folder, sharded by the first two characters of the random name.

    Implements `ImageStore` (and so `BlobStore`); `types` says which extensions it keeps.
    Blocking file I/O: callers on the event loop run these methods in a thread.
    """

    def __init__(self, root: Path, ttl_seconds: int,
                 types: Mapping[str, str] = IMAGE_TYPES) -> None:
        self.root = root
        self.ttl_seconds = ttl_seconds
        self.types = types

    def _path(self, name: str) -> Path:
        return self.root / name[:2] / name

    def put(self, data: bytes, ext: str, name: str | None = None) -> str:
        if ext not in self.types:
            raise ValueError(f"this store does not keep .{ext} files")
        name = name or mint_name(ext)
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".part")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)  # readers never see a half-written file
        return name

    def path(self, name: str) -> Path:
        """The file holding `name`; `NotFound` if the name is malformed (before the disk is
        touched) or nothing is there."""
        check_name(name, self.types)
        path = self._path(name)
        if not path.is_file():
            raise NotFound("No such image.")
        return path

    def open(self, name: str) -> OpenedImage:
        media_type = check_name(name, self.types)
        path = self.path(name)
        try:
            size = path.stat().st_size
        except FileNotFoundError:  # swept between the check and the stat
            raise NotFound("No such image.") from None
        return OpenedImage(name, media_type, size, _chunks(path), path=path)

    def read(self, name: str) -> bytes:
        try:
            return self.path(name).read_bytes()
        except FileNotFoundError:  # swept between the check and the read
            raise NotFound("No such image.") from None

    def delete(self, name: str) -> None:
        check_name(name, self.types)
        self._path(name).unlink(missing_ok=True)

    def sweep(self, now: float | None = None) -> int:
        """Delete files older than the link lifetime (and stale partial writes).

        One second of grace: links expire at the signing time rounded up, so a file is never
        removed while a link to it still verifies. Every file in a shard folder goes by age,
        whatever its extension.
        """
        cutoff = (now if now is not None else time.time()) - self.ttl_seconds - 1
        removed = 0
        if not self.root.is_dir():
            return 0
        for shard in self.root.iterdir():
            if not shard.is_dir():
                continue
            for path in shard.iterdir():
                try:
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed


def _chunks(path: Path) -> Iterator[bytes]:
    """The file's bytes; a generator, so the file is opened on the first chunk only."""
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            yield chunk
