"""Generated images on the local disk, swept when they expire."""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import NotFound

# Names are minted here and only ever matched against this pattern before touching the disk,
# so a request path can never reach outside the store (no '/', no '..', no other extension).
_NAME_RE = re.compile(r"^(?P<id>[A-Za-z0-9_-]{22,64})\.(?P<ext>png|jpeg|webp|json)$")
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp",
               "json": "application/json"}


@dataclass(frozen=True)
class StoredImage:
    name: str
    path: Path

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.name.rsplit(".", 1)[1]]

    @property
    def is_image(self) -> bool:
        return self.media_type.startswith("image/")


class LocalImageStore:
    """One flat folder, sharded by the first two characters of the random id.

    Blocking file I/O; callers on the event loop run these methods in a thread.
    """

    def __init__(self, root: Path, ttl_seconds: int) -> None:
        self.root = root
        self.ttl_seconds = ttl_seconds

    def _path(self, name: str) -> Path:
        return self.root / name[:2] / name

    def put(self, data: bytes, ext: str) -> StoredImage:
        name = f"{secrets.token_urlsafe(18)}.{ext}"
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".part")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)  # readers never see a half-written file
        return StoredImage(name, path)

    def get(self, name: str) -> StoredImage:
        if not _NAME_RE.fullmatch(name):
            raise NotFound("No such image.")
        path = self._path(name)
        if not path.is_file():
            raise NotFound("No such image.")
        return StoredImage(name, path)

    def sweep(self, now: float | None = None) -> int:
        """Delete images older than the link lifetime (and stale partial writes).

        One second of grace: links expire at the signing time rounded up, so a file is never
        removed while a link to it still verifies.
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
