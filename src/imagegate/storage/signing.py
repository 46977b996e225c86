"""HMAC-signed, expiring links to stored images.

A link is `/v1/media/{name}?expires={unix}&sig={mac}` where `mac` covers the name and the expiry,
so neither can be changed without the server's secret. No database lookup is needed to check one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from urllib.parse import urlencode

from ..errors import Forbidden

MEDIA_PREFIX = "/v1/media/"


class URLSigner:
    def __init__(self, secret: bytes, ttl_seconds: int) -> None:
        if len(secret) < 16:
            raise ValueError("the URL signing secret must be at least 16 bytes")
        self._secret = secret
        self.ttl_seconds = ttl_seconds

    def _mac(self, name: str, expires: int) -> str:
        digest = hmac.new(self._secret, f"{name}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:24]).decode().rstrip("=")

    def sign(self, name: str, *, now: float | None = None) -> tuple[str, int]:
        """Return (path with query, expiry in unix seconds) for a stored image's name."""
        # Round up: a link must live at least ttl_seconds, never a fraction of a second less.
        expires = math.ceil((now if now is not None else time.time()) + self.ttl_seconds)
        query = urlencode({"expires": expires, "sig": self._mac(name, expires)})
        return f"{MEDIA_PREFIX}{name}?{query}", expires

    def verify(self, name: str, expires: str | None, sig: str | None,
               *, now: float | None = None) -> None:
        """Raise 403 unless the signature matches and the link has not expired."""
        if not expires or not sig or not (expires.isascii() and expires.isdigit()):
            raise Forbidden("This image link is not signed.", code="invalid_signature")
        if not hmac.compare_digest(self._mac(name, int(expires)), sig):
            raise Forbidden("This image link's signature does not match.",
                            code="invalid_signature")
        if int(expires) <= (now if now is not None else time.time()):
            raise Forbidden("This image link has expired.", code="link_expired")
