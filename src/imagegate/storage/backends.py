"""The image store, the answer store and the link signer that the settings choose."""

from __future__ import annotations

from typing import NamedTuple

from ..settings import Settings
from .base import ANSWER_TYPES, BlobStore, ImageStore
from .local import LocalStore
from .signing import URLSigner


class Stores(NamedTuple):
    images: ImageStore
    answers: BlobStore
    """Answers replayed for an Idempotency-Key: kept apart, never served as media."""
    signer: URLSigner


def open_stores(settings: Settings) -> Stores:
    """`[storage] backend`'s stores. An object store is checked here, once: a bucket that is
    missing or out of reach is a `ValueError` naming it (the server refuses to start), and its
    client library is imported only then."""
    ttl = settings.storage.url_ttl_seconds
    signer = URLSigner(settings.signing_secret(), ttl)
    if settings.storage.backend == "local":
        return Stores(LocalStore(settings.images_dir, ttl),
                      LocalStore(settings.data_dir / "answers", ttl, ANSWER_TYPES), signer)
    try:
        from .s3 import PresignedLinks, S3Store
    except ImportError as exc:
        raise ValueError(f'storage_backend = "s3" needs the `s3` extra '
                         f'(pip install "imagegate[s3]"): {exc}') from None
    s3 = settings.storage.s3
    images = S3Store(s3, "images", ttl)
    answers = S3Store(s3, "answers", ttl, ANSWER_TYPES)
    images.check()
    if s3.presigned_links:
        signer = PresignedLinks(images, settings.signing_secret(), ttl)
    return Stores(images, answers, signer)
