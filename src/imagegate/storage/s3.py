"""A store in an S3-compatible bucket, so that any gateway replica serves what another stored.

Built on obstore (Rust's `object_store`): a blocking API that releases the interpreter lock
while it waits, which is the store contract's (callers on the event loop use a thread), with
less client CPU per request than boto3 (docs/deployment.md, "Object storage", has the figures).
Imported only when `[storage] backend = "s3"`: the `s3` extra need not be installed otherwise.

Objects are PREFIX/images/NAME and PREFIX/answers/NAME, each written by one PUT (atomic: no
reader sees half of one), typed with its media type so that a presigned GET serves it right.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

import obstore
from obstore.exceptions import BaseError as ObjectStoreError
from obstore.store import S3Store as _Bucket

from ..errors import NotFound
from ..settings import S3Settings
from .base import IMAGE_TYPES, OpenedImage, StorageUnavailable, check_name, mint_name
from .signing import URLSigner

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config

CHUNK_BYTES = 256 * 1024
SWEEP_GRACE_SECONDS = 2
"""Listings give LastModified in whole seconds (up to one lost), on the bucket's clock: one
second more than the local disk's grace, so an object never goes while a link to it verifies
(clocks kept in step by NTP)."""
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
"""SigV4's longest presigned URL."""

log = logging.getLogger(__name__)

_CLIENT: ClientConfig = {"connect_timeout": timedelta(seconds=5),
                         "timeout": timedelta(seconds=60)}
_RETRY: RetryConfig = {"max_retries": 3, "retry_timeout": timedelta(seconds=15)}
_CHECK_RETRY: RetryConfig = {"max_retries": 0, "retry_timeout": timedelta(seconds=5)}


def open_bucket(settings: S3Settings, key_prefix: str, *,
                retry: RetryConfig = _RETRY) -> _Bucket:
    """A client for PREFIX/`key_prefix`/ in the configured bucket. Credentials, session token
    included, come from the AWS environment variables (or the instance's role)."""
    prefix = "/".join(part for part in (settings.prefix.strip("/"), key_prefix) if part)
    endpoint = settings.endpoint_url
    client: ClientConfig = {**_CLIENT, "allow_http": bool(endpoint and
                                                           endpoint.startswith("http://"))}
    config: S3Config = {"region": settings.region,
                        "virtual_hosted_style_request": settings.addressing_style == "virtual"}
    if endpoint:
        config["endpoint"] = endpoint
    return _Bucket(settings.bucket, prefix=prefix, config=config, client_options=client,
                   retry_config=retry)


class S3Store:
    """Implements `ImageStore` (and so `BlobStore`) on a bucket; `types` says which extensions
    it keeps. Blocking network I/O: callers on the event loop run these methods in a thread."""

    def __init__(self, settings: S3Settings, key_prefix: str, ttl_seconds: int,
                 types: Mapping[str, str] = IMAGE_TYPES) -> None:
        if not settings.bucket:
            raise ValueError('storage_backend = "s3" needs a bucket: set s3_bucket '
                             "(IMAGEGATE_S3_BUCKET)")
        self.settings = settings
        self.key_prefix = key_prefix
        self.ttl_seconds = ttl_seconds
        self.types = types
        try:
            self.bucket = open_bucket(settings, key_prefix)
        except (ObjectStoreError, ValueError) as exc:  # a malformed endpoint or region
            raise ValueError(f"cannot use the object store s3://{settings.bucket}: "
                             f"{_reason(exc)}") from None

    @property
    def where(self) -> str:
        """The store as a person would name it: s3://BUCKET/PREFIX/ (at ENDPOINT)."""
        prefix = self.bucket.prefix or ""
        at = f" at {self.settings.endpoint_url}" if self.settings.endpoint_url else ""
        return f"s3://{self.settings.bucket}/{prefix}{'/' if prefix else ''}{at}"

    def check(self) -> None:
        """At start-up: one listing, so a missing bucket, bad credentials or an unreachable
        endpoint stop the server with one line instead of failing its first requests."""
        try:
            probe = open_bucket(self.settings, self.key_prefix, retry=_CHECK_RETRY)
            next(iter(obstore.list(probe, chunk_size=1)), None)
        except (ObjectStoreError, OSError, ValueError) as exc:
            raise ValueError(f"cannot use the object store {self.where}: {_reason(exc)}"
                             ) from None

    def put(self, data: bytes, ext: str, name: str | None = None) -> str:
        if ext not in self.types:
            raise ValueError(f"this store does not keep .{ext} files")
        name = name or mint_name(ext)
        with _unavailable(missing_object=False):
            obstore.put(self.bucket, name, data,
                        attributes={"Content-Type": self.types[ext]})
        return name

    def open(self, name: str) -> OpenedImage:
        media_type = check_name(name, self.types)
        with _unavailable():
            meta = obstore.head(self.bucket, name)
        return OpenedImage(name, media_type, meta["size"], self._chunks(name))

    def read(self, name: str) -> bytes:
        check_name(name, self.types)
        with _unavailable():
            return bytes(obstore.get(self.bucket, name).bytes())

    def delete(self, name: str) -> None:
        check_name(name, self.types)
        try:
            with _unavailable():
                obstore.delete(self.bucket, name)
        except NotFound:  # S3 answers a missing key's DELETE with 204; other stores may not
            pass

    def sweep(self, now: float | None = None) -> int:
        """Delete what was written more than the link lifetime ago, by the listing's
        LastModified: everything under this store's prefix, whatever its name. Nothing when
        `sweep` is off (a bucket lifecycle rule expires the objects instead)."""
        if not self.settings.sweep:
            return 0
        cutoff = (now if now is not None else time.time()) - self.ttl_seconds \
            - SWEEP_GRACE_SECONDS
        removed = 0
        with _unavailable(missing_object=False):
            for listed in obstore.list(self.bucket, chunk_size=1000):
                expired = [meta["path"] for meta in listed
                           if meta["last_modified"].timestamp() < cutoff]
                if expired:
                    self._delete_many(expired)
                    removed += len(expired)
        return removed

    def _delete_many(self, paths: Sequence[str]) -> None:
        try:
            obstore.delete(self.bucket, paths)  # one request per 1000 keys
        except FileNotFoundError:  # another replica's sweeper was first
            pass

    def presign(self, name: str, expires_in: int) -> str:
        """A URL the store itself serves `name` at, for `expires_in` seconds, to anyone."""
        with _unavailable(missing_object=False):
            return obstore.sign(self.bucket, "GET", name, timedelta(seconds=expires_in))

    def _chunks(self, name: str) -> Iterator[bytes]:
        """The object's bytes; a generator, so the GET is sent on the first chunk only."""
        with _unavailable():
            result = obstore.get(self.bucket, name)
            yield from result.stream(min_chunk_size=CHUNK_BYTES)


class PresignedLinks(URLSigner):
    """Links to images that the bucket serves itself (behind a CDN, say): `sign` gives the
    store's presigned URL, expiring when an imagegate link would. /v1/media links still verify,
    so links handed out before the switch keep working."""

    def __init__(self, store: S3Store, secret: bytes, ttl_seconds: int) -> None:
        super().__init__(secret, ttl_seconds)
        if ttl_seconds > MAX_PRESIGN_SECONDS:
            raise ValueError(f"s3_presigned_links: a presigned URL lives at most "
                             f"{MAX_PRESIGN_SECONDS} s (7 days), and url_ttl_seconds is "
                             f"{ttl_seconds}")
        self.store = store

    def sign(self, name: str, *, now: float | None = None) -> tuple[str, int]:
        _link, expires = super().sign(name, now=now)
        start = now if now is not None else time.time()
        return self.store.presign(name, max(1, int(expires - start))), expires


@contextlib.contextmanager
def _unavailable(*, missing_object: bool = True) -> Iterator[None]:
    """Object-store failures as the API's errors: a missing object is 404 (a swept image), any
    other failure 503 `storage_unavailable`, its details in the log, not in the answer.
    `missing_object`: whether a 404 can only mean the object (not so for a PUT or a listing,
    where it means the bucket is gone)."""
    try:
        yield
    except FileNotFoundError as exc:  # what obstore raises for a 404
        if missing_object:
            raise NotFound("No such image.") from None
        _log_failure(exc)
        raise StorageUnavailable(_UNAVAILABLE) from exc
    except (ObjectStoreError, OSError) as exc:
        _log_failure(exc)
        raise StorageUnavailable(_UNAVAILABLE) from exc


_UNAVAILABLE = "The image store is unavailable; try again shortly."


def _log_failure(exc: BaseException) -> None:
    log.warning("object store failed: %s", _reason(exc))


def _reason(exc: BaseException) -> str:
    """An object-store error on one line: S3's error code and message when it sent them."""
    text = str(exc)
    code = re.search(r"<Code>([^<]+)</Code>", text)
    message = re.search(r"<Message>([^<]+)</Message>", text)
    if code:
        return code[1] + (f" ({message[1]})" if message else "")
    first = " ".join(text.split()).split(" Debug source:")[0]  # the Rust client's own dump
    return first if len(first) <= 300 else first[:297] + "..."
