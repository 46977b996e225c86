"""The web console: `GET /` and its assets under `/console/`, served from package data
(src/imagegate/web/), so nothing beyond the Python package is installed or built.

The console is a static page that calls the public API with the key the user signs in with; the
server knows nothing about console sessions. Every console response carries a strict Content
Security Policy (scripts, styles and connections to this origin only; images also from where
image links point) and is sent gzip-compressed to browsers that accept it. Assets are read once
and kept in memory with their compressed form and an ETag.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..errors import NotFound
from ..settings import Settings
from . import deps

ASSET_ROOT = "web"
"""The console's files, as package data of `imagegate`."""
INDEX = "index.html"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".json": "application/json", ".html": "text/html; charset=utf-8",
          ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    """None when compressing does not make it smaller (images)."""
    media_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every file under web/, by its path relative to it ("js/main.js")."""
    assets: dict[str, Asset] = {}
    root = resources.files("imagegate").joinpath(ASSET_ROOT)

    def walk(node: resources.abc.Traversable, prefix: str) -> None:
        for child in node.iterdir():
            name = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, f"{name}/")
            elif not child.name.startswith("."):
                body = child.read_bytes()
                packed = gzip.compress(body, compresslevel=9, mtime=0)
                suffix = "." + child.name.rpartition(".")[2]
                media = _TYPES.get(suffix) or mimetypes.guess_type(child.name)[0] \
                    or "application/octet-stream"
                assets[name] = Asset(body, packed if len(packed) < len(body) else None, media,
                                     '"' + hashlib.sha256(body).hexdigest()[:32] + '"')

    if root.is_dir():
        walk(root, "")
    return assets


def content_security_policy(settings: Settings) -> str:
    """Only this origin runs code or is called; images may also come from where image links
    point: `public_url` and, with presigned links, the S3 endpoint."""
    image_sources = ["'self'", "data:", "blob:"]
    for url in (settings.public_url,
                settings.storage.s3.endpoint_url
                if settings.storage.backend == "s3" and settings.storage.s3.presigned_links
                else None):
        if url:
            parts = urlsplit(url)
            image_sources.append(f"{parts.scheme}://{parts.netloc}")
    if settings.storage.backend == "s3" and settings.storage.s3.presigned_links \
            and not settings.storage.s3.endpoint_url:
        image_sources.append("https://*.amazonaws.com")
    return "; ".join((
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        f"img-src {' '.join(dict.fromkeys(image_sources))}",
        "connect-src 'self'",
        "font-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ))


def _assets(request: Request) -> dict[str, Asset]:
    cached: dict[str, Asset] | None = getattr(request.app.state, "console_assets", None)
    if cached is None:
        cached = request.app.state.console_assets = load_assets()
    return cached


def _serve(request: Request, name: str) -> Response:
    asset = _assets(request).get(name)
    if asset is None:
        raise NotFound(f"No console file {name!r}.")
    headers = {
        "Content-Security-Policy": content_security_policy(deps.settings(request)),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        # Revalidated on each load (cheap: 304 by ETag), so an upgrade shows at once.
        "Cache-Control": "no-cache",
        "ETag": asset.etag,
        "Vary": "Accept-Encoding",
    }
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    body = asset.body
    if asset.gzipped is not None and "gzip" in request.headers.get("accept-encoding", ""):
        body, headers["Content-Encoding"] = asset.gzipped, "gzip"
    return Response(body, media_type=asset.media_type, headers=headers)


@router.get("/")
async def index(request: Request) -> Response:
    return _serve(request, INDEX)


@router.get("/console/{name:path}")
async def asset(name: str, request: Request) -> Response:
    if name == INDEX or ".." in name.split("/"):
        raise NotFound(f"No console file {name!r}.")
    return _serve(request, name)
