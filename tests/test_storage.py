"""URLSigner (signed, expiring links); the store interface (storage/base.py), as a contract every
backend meets (the local disk, and an S3 bucket on moto's server: `BACKENDS`); LocalStore's own
ways (files on disk, swept by age); and GET /v1/media/ serving whatever a store opens, never an
idempotent answer. The S3 store's own ways are test_storage_s3.py's."""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from s3_server import s3_bucket, s3_server  # noqa: F401  (fixtures of the "s3" backend)

from imagegate.errors import Forbidden, NotFound
from imagegate.storage import (
    ANSWER_TYPES,
    IMAGE_TYPES,
    BlobStore,
    ImageStore,
    LocalStore,
    OpenedImage,
    URLSigner,
)
from imagegate.storage.signing import MEDIA_PREFIX

SECRET = b"0123456789abcdef-test-secret"
NAME = "AbCdEfGhIjKlMnOpQrStUvWx.png"
NOW = 1_700_000_000


def split(link: str) -> tuple[str, str, str]:
    """'/v1/media/NAME?expires=E&sig=S' -> (NAME, E, S)."""
    parts = urlsplit(link)
    assert parts.path.startswith(MEDIA_PREFIX)
    query = parse_qs(parts.query, strict_parsing=True)
    assert set(query) == {"expires", "sig"}
    return parts.path[len(MEDIA_PREFIX):], query["expires"][0], query["sig"][0]


# --- URLSigner -------------------------------------------------------------------------------

def test_sign_verify_round_trip() -> None:
    signer = URLSigner(SECRET, ttl_seconds=3600)
    link, expires = signer.sign(NAME, now=NOW)
    assert expires == NOW + 3600
    name, exp, sig = split(link)
    assert (name, exp) == (NAME, str(NOW + 3600))
    signer.verify(name, exp, sig, now=NOW)
    signer.verify(name, exp, sig, now=NOW + 3599)  # still valid one second before expiry


def test_sign_uses_wall_clock_by_default() -> None:
    signer = URLSigner(SECRET, ttl_seconds=60)
    before = time.time()
    link, expires = signer.sign(NAME)
    # at least the TTL (rounding up is fine), never more than a second beyond it
    assert before + 60 <= expires <= time.time() + 61
    signer.verify(*split(link))


def test_signature_is_url_safe_and_deterministic() -> None:
    signer = URLSigner(SECRET, ttl_seconds=10)
    a = signer.sign(NAME, now=NOW)
    assert a == signer.sign(NAME, now=NOW)
    _, _, sig = split(a[0])
    assert sig and all(c.isalnum() or c in "-_" for c in sig)
    assert split(signer.sign(NAME, now=NOW + 1)[0])[2] != sig


def _forbidden(signer: URLSigner, name: str, expires, sig, now: float, code: str) -> None:
    with pytest.raises(Forbidden) as info:
        signer.verify(name, expires, sig, now=now)
    err = info.value
    assert (err.status, err.type, err.code) == (403, "permission_error", code)
    assert err.body()["error"]["code"] == code


def test_tampered_name_is_rejected() -> None:
    signer = URLSigner(SECRET, ttl_seconds=3600)
    _, exp, sig = split(signer.sign(NAME, now=NOW)[0])
    other = "X" + NAME[1:]
    _forbidden(signer, other, exp, sig, NOW, "invalid_signature")
    _forbidden(signer, NAME.replace(".png", ".webp"), exp, sig, NOW, "invalid_signature")


def test_tampered_expiry_is_rejected() -> None:
    signer = URLSigner(SECRET, ttl_seconds=3600)
    _, exp, sig = split(signer.sign(NAME, now=NOW)[0])
    _forbidden(signer, NAME, str(int(exp) + 86400), sig, NOW, "invalid_signature")
    _forbidden(signer, NAME, str(int(exp) - 1), sig, NOW, "invalid_signature")


@pytest.mark.parametrize("mutate", [
    lambda s: s[:-1] + ("A" if s[-1] != "A" else "B"),
    lambda s: s[:-1],
    lambda s: s + "A",
    lambda s: s.upper() if s.upper() != s else s.lower(),
    lambda s: "",
])
def test_tampered_signature_is_rejected(mutate) -> None:
    signer = URLSigner(SECRET, ttl_seconds=3600)
    _, exp, sig = split(signer.sign(NAME, now=NOW)[0])
    assert mutate(sig) != sig
    _forbidden(signer, NAME, exp, mutate(sig), NOW, "invalid_signature")


@pytest.mark.parametrize("expires, sig", [
    (None, "abc"), ("", "abc"), ("123", None), ("123", ""), ("-5", "abc"), ("1.5", "abc"),
    ("1e9", "abc"), (" 123", "abc"),
])
def test_missing_or_malformed_query_is_unsigned(expires, sig) -> None:
    signer = URLSigner(SECRET, ttl_seconds=3600)
    _forbidden(signer, NAME, expires, sig, NOW, "invalid_signature")


def test_other_secret_is_rejected() -> None:
    _, exp, sig = split(URLSigner(SECRET, 3600).sign(NAME, now=NOW)[0])
    _forbidden(URLSigner(SECRET + b"!", 3600), NAME, exp, sig, NOW, "invalid_signature")


def test_expired_link() -> None:
    signer = URLSigner(SECRET, ttl_seconds=60)
    _, exp, sig = split(signer.sign(NAME, now=NOW)[0])
    _forbidden(signer, NAME, exp, sig, NOW + 61, "link_expired")
    _forbidden(signer, NAME, exp, sig, NOW + 10**6, "link_expired")


def test_expiry_exactly_now_is_expired() -> None:
    signer = URLSigner(SECRET, ttl_seconds=60)
    _, exp, sig = split(signer.sign(NAME, now=NOW)[0])
    signer.verify(NAME, exp, sig, now=NOW + 59.999)
    _forbidden(signer, NAME, exp, sig, NOW + 60, "link_expired")


def test_bad_signature_wins_over_expiry() -> None:
    """A forged link learns nothing about expiry: the signature is checked first."""
    signer = URLSigner(SECRET, ttl_seconds=60)
    _, exp, sig = split(signer.sign(NAME, now=NOW)[0])
    _forbidden(signer, NAME, exp, sig[::-1], NOW + 3600, "invalid_signature")


@pytest.mark.parametrize("secret", [b"", b"short", b"x" * 15])
def test_short_secret_rejected(secret: bytes) -> None:
    with pytest.raises(ValueError):
        URLSigner(secret, ttl_seconds=60)


def test_sixteen_byte_secret_accepted() -> None:
    signer = URLSigner(b"x" * 16, ttl_seconds=60)
    signer.verify(*split(signer.sign(NAME, now=NOW)[0]), now=NOW)



# --- the store interface: a contract every backend meets -------------------------------------

StoreFactory = Callable[..., ImageStore]

def _s3_store(request: pytest.FixtureRequest, ttl: int, types: Mapping[str, str]) -> ImageStore:
    from imagegate.settings import S3Settings
    from imagegate.storage.s3 import S3Store

    bucket = request.getfixturevalue("s3_bucket")
    settings = S3Settings(bucket=bucket.name, endpoint_url=bucket.server.endpoint,
                          prefix=bucket.prefix)
    return S3Store(settings, "answers" if types is ANSWER_TYPES else "images", ttl, types)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path, int, Mapping[str, str]],
                             ImageStore]] = {
    "local": lambda _request, tmp, ttl, types: LocalStore(tmp / "store", ttl, types),
    "s3": lambda request, _tmp, ttl, types: _s3_store(request, ttl, types),
}
"""How each backend is made for a test: a private, empty store (under `tmp`, in a new bucket)."""


@pytest.fixture(params=sorted(BACKENDS))
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    def make(ttl_seconds: int = 100, types: Mapping[str, str] = IMAGE_TYPES) -> ImageStore:
        return BACKENDS[request.param](request, tmp_path, ttl_seconds, types)
    return make


def _bytes_of(opened: OpenedImage) -> bytes:
    return b"".join(opened.chunks)


@pytest.mark.parametrize("ext, media_type", sorted(IMAGE_TYPES.items()))
def test_contract_put_read_open(make_store: StoreFactory, ext: str, media_type: str) -> None:
    store = make_store()
    data = b"image-bytes-" + ext.encode() * 1000
    name = store.put(data, ext)
    assert name.endswith("." + ext)
    assert store.read(name) == data
    opened = store.open(name)
    assert (opened.name, opened.media_type, opened.size) == (name, media_type, len(data))
    assert _bytes_of(opened) == data


def test_contract_names_are_distinct_unguessable_and_path_free(make_store: StoreFactory) -> None:
    store = make_store()
    names = {store.put(b"x", "png") for _ in range(50)}
    assert len(names) == 50
    for name in names:
        stem = name.rsplit(".", 1)[0]
        assert len(stem) >= 22
        assert "/" not in name and ".." not in name
        assert store.read(name) == b"x"


def test_contract_unknown_name(make_store: StoreFactory) -> None:
    store = make_store()
    unknown = "A" * 24 + ".png"
    for ask in (store.read, store.open):
        with pytest.raises(NotFound) as info:
            ask(unknown)
        assert (info.value.status, info.value.code) == (404, "not_found")
    store.delete(unknown)  # nothing there: not an error


@pytest.mark.parametrize("bad", [
    "../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "{stem}/../{name}",
    "sub/{name}",
    "/{name}",
    "..{name}",
    "{stem}..png",
    "{stem}.png/",
    "{stem}.gif",
    "{stem}.PNG",
    "{stem}.json",  # not an image: an image store never holds one
    "{stem}.png.part",
    "{stem}.png\x00",
    "{name}\n",  # `$` in a regex also matches before a final newline
    "{stem}",
    "{stem}.",
    ".png",
    "abc.png",  # id too short
    "{short}.png",
    "{long}.png",
    "",
])
def test_contract_malformed_names_are_not_found(make_store: StoreFactory, bad: str) -> None:
    store = make_store()
    real = store.put(b"secret", "png")
    stem = real.rsplit(".", 1)[0]
    name = bad.format(stem=stem, name=real, short="A" * 21, long="A" * 65)
    for ask in (store.read, store.open, store.delete):
        with pytest.raises(NotFound):
            ask(name)
    assert store.read(real) == b"secret"  # and nothing happened to the real one


def test_contract_an_image_store_keeps_images_only(make_store: StoreFactory) -> None:
    with pytest.raises(ValueError):
        make_store().put(b"{}", "json")


def test_contract_the_answer_store_keeps_json_only(make_store: StoreFactory) -> None:
    answers: BlobStore = make_store(types=ANSWER_TYPES)
    name = answers.put(b'{"data": []}', "json")
    assert name.endswith(".json") and answers.read(name) == b'{"data": []}'
    with pytest.raises(ValueError):
        answers.put(b"x", "png")
    with pytest.raises(NotFound):
        answers.read(name.replace(".json", ".png"))


def test_contract_delete(make_store: StoreFactory) -> None:
    store = make_store()
    gone, kept = store.put(b"a", "png"), store.put(b"b", "png")
    store.delete(gone)
    store.delete(gone)  # twice is fine
    with pytest.raises(NotFound):
        store.open(gone)
    assert store.read(kept) == b"b"


def test_contract_sweep_keeps_what_is_young_and_removes_what_expired(
        make_store: StoreFactory) -> None:
    store = make_store(ttl_seconds=100)
    assert store.sweep() == 0  # an empty (maybe not yet created) store
    names = [store.put(b"x", ext) for ext in ("png", "jpeg", "webp")]
    assert store.sweep() == 0
    assert store.sweep(now=time.time() + 90) == 0  # within the TTL: links still verify
    assert store.sweep(now=time.time() + 105) == 3
    for name in names:
        with pytest.raises(NotFound):
            store.read(name)
    assert store.sweep(now=time.time() + 105) == 0  # nothing left to remove


def test_contract_open_reads_nothing_until_asked(make_store: StoreFactory) -> None:
    """The media route opens before it checks the signature: a forged link costs no read."""
    store = make_store()
    name = store.put(b"x" * 10, "png")
    opened = store.open(name)
    store.delete(name)  # had open() read (or, on disk, opened) the object, this would not matter
    with pytest.raises((FileNotFoundError, NotFound)):
        _bytes_of(opened)


# --- LocalStore: files on disk ---------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "images", ttl_seconds=100)


def test_store_creates_its_root_by_the_first_put(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "images"
    store = LocalStore(root, ttl_seconds=1)
    assert store.sweep() == 0  # sweeping a store that has no folder yet is fine
    name = store.put(b"x", "png")
    assert root.is_dir()
    assert store.path(name).read_bytes() == b"x"


def test_files_are_sharded_under_the_root_and_whole(store: LocalStore) -> None:
    name = store.put(b"image-bytes", "webp")
    path = store.path(name)
    assert path == store.root / name[:2] / name
    assert path.read_bytes() == b"image-bytes"
    assert not list(store.root.rglob("*.part"))  # no partial file left behind
    opened = store.open(name)
    assert opened.path == path  # the fast path the media route sends with sendfile


def test_path_checks_the_name_before_the_disk(store: LocalStore, tmp_path: Path) -> None:
    """A file that exists but whose name breaks the pattern is still not served."""
    (store.root / "ab").mkdir(parents=True)
    (store.root / "ab" / "ab.png").write_bytes(b"x")
    with pytest.raises(NotFound):
        store.open("ab.png")
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"x")
    with pytest.raises(NotFound):
        store.open("../../outside.png")


def test_id_length_bounds(store: LocalStore) -> None:
    for length in (22, 64):
        name = "A" * length + ".png"
        path = store.root / name[:2] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        assert store.path(name) == path


def _age(path: Path, seconds: float, now: float) -> None:
    os.utime(path, (now - seconds, now - seconds))


def test_sweep_goes_by_file_age(store: LocalStore) -> None:
    """TTL is 100 s; ages keep a few seconds off the boundary so a second of grace is allowed."""
    now = time.time()
    old = [store.put(b"old", "png") for _ in range(3)]
    fresh = [store.put(b"new", "webp") for _ in range(2)]
    for name in old:
        _age(store.path(name), 105, now)
    for name in fresh:
        _age(store.path(name), 95, now)
    assert store.sweep(now=now) == 3
    for name in old:
        assert not (store.root / name[:2] / name).exists()
    for name in fresh:
        assert store.read(name) == b"new"


def test_sweep_uses_wall_clock_by_default(store: LocalStore) -> None:
    name = store.put(b"x", "png")
    path = store.path(name)
    assert store.sweep() == 0
    _age(path, 1000, time.time())
    assert store.sweep() == 1
    assert not path.exists()


def test_sweep_removes_stale_partial_writes(store: LocalStore) -> None:
    now = time.time()
    keep = store.put(b"x", "png")
    shard = store.path(keep).parent
    stale = shard / (keep[:2] + "Z" * 22 + ".png.part")
    stale.write_bytes(b"half")
    _age(stale, 500, now)
    recent = shard / (keep[:2] + "Y" * 22 + ".png.part")
    recent.write_bytes(b"half")  # a write in progress right now
    assert store.sweep(now=now) == 1
    assert not stale.exists()
    assert recent.exists()
    assert store.read(keep) == b"x"


def test_sweep_removes_old_files_whatever_their_extension(store: LocalStore) -> None:
    """Replayable answers were once kept among the images: an upgraded store still sweeps
    them."""
    now = time.time()
    legacy = store.root / "Ab" / ("Ab" + "c" * 22 + ".json")
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"{}")
    _age(legacy, 500, now)
    assert store.sweep(now=now) == 1
    assert not legacy.exists()


def test_sweep_ignores_stray_files_in_root(store: LocalStore) -> None:
    now = time.time()
    store.root.mkdir(parents=True)
    stray = store.root / "README"
    stray.write_text("not an image")
    _age(stray, 10_000, now)
    name = store.put(b"x", "png")
    _age(store.path(name), 10_000, now)
    assert store.sweep(now=now) == 1
    assert stray.exists()


def test_stored_files_are_not_executable(store: LocalStore) -> None:
    mode = store.path(store.put(b"x", "png")).stat().st_mode
    assert not mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


# --- links and the sweeper together ----------------------------------------------------------

@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.5, 0.999])
def test_link_lives_at_least_the_ttl(fraction: float) -> None:
    """Signed at a fractional second, a link still verifies until a full TTL has passed."""
    signer = URLSigner(SECRET, ttl_seconds=60)
    signed_at = NOW + fraction
    link, expires = signer.sign(NAME, now=signed_at)
    assert expires >= signed_at + 60
    signer.verify(*split(link), now=signed_at + 60 - 0.0005)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.999])
def test_sweeper_never_removes_an_image_whose_link_verifies(tmp_path: Path,
                                                            fraction: float) -> None:
    ttl = 30
    store = LocalStore(tmp_path / "images", ttl_seconds=ttl)
    signer = URLSigner(SECRET, ttl_seconds=ttl)
    t = NOW + fraction
    name = store.put(b"x", "png")
    os.utime(store.path(name), (t, t))  # written at t, signed at t
    link, expires = signer.sign(name, now=t)
    last_valid = expires - 0.0005
    signer.verify(*split(link), now=last_valid)
    assert store.sweep(now=last_valid) == 0
    assert store.path(name).exists()
    assert store.sweep(now=expires + 5) == 1  # and it does go once the link is dead


# --- GET /v1/media/ ----------------------------------------------------------------------------

FAKE_CONFIG = """
[providers]
fake = "fake_providers:FakeProvider"

[models.fake-image]
backend = "fake"
[models.fake-image.capabilities]
max_n = 4
"""


class WithoutFastPath:
    """A store as an object store would be: it opens images, but has no file to hand over."""

    def __init__(self, inner: ImageStore) -> None:
        self.inner = inner
        self.ttl_seconds = inner.ttl_seconds
        self.opened: list[str] = []

    def put(self, data: bytes, ext: str, name: str | None = None) -> str:
        return self.inner.put(data, ext, name)

    def read(self, name: str) -> bytes:
        return self.inner.read(name)

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def sweep(self, now: float | None = None) -> int:
        return self.inner.sweep(now)

    def open(self, name: str) -> OpenedImage:
        opened = self.inner.open(name)
        self.opened.append(name)
        return dataclasses.replace(opened, chunks=_in_pieces(opened.chunks), path=None)


def _in_pieces(chunks: Iterator[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        yield from (chunk[i:i + 7] for i in range(0, len(chunk), 7))


async def _url_image(srv: Any) -> tuple[str, str]:
    """A generated image's link (path and query) and its name."""
    response = await srv.client.post("/v1/images/generations", headers=srv.auth(), json={
        "model": "fake-image", "prompt": "a link", "response_format": "url"})
    assert response.status_code == 200, response.text
    parts = urlsplit(response.json()["data"][0]["url"])
    return f"{parts.path}?{parts.query}", parts.path.rsplit("/", 1)[1]


async def test_media_serves_an_image_from_a_store_without_files(inprocess: Any) -> None:
    srv = await inprocess(FAKE_CONFIG)
    service = srv.app.state.service
    local = service.store
    service.store = WithoutFastPath(local)
    link, name = await _url_image(srv)
    expected = local.read(name)

    got = await srv.client.get(link)
    assert got.status_code == 200, got.text
    assert got.content == expected
    assert got.headers["content-type"] == "image/png"
    assert got.headers["content-length"] == str(len(expected))
    assert got.headers["cache-control"].startswith("private, max-age=")
    head = await srv.client.head(link)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(expected))
    assert service.store.opened == [name, name]

    # The order of the answers is the store's business no more than before: 404, then 403.
    assert (await srv.client.get(link.replace(name, "A" * 24 + ".png"))).status_code == 404
    assert (await srv.client.get(link.split("?")[0])).status_code == 403


async def test_media_serves_a_local_file_with_ranges(inprocess: Any) -> None:
    srv = await inprocess(FAKE_CONFIG)
    link, name = await _url_image(srv)
    expected = srv.app.state.service.store.read(name)
    got = await srv.client.get(link, headers={"range": "bytes=0-3"})
    assert got.status_code == 206 and got.content == expected[:4]


async def test_an_idempotent_answer_is_never_served_as_media(inprocess: Any) -> None:
    """b64 answers kept for an Idempotency-Key live apart from the images: the image store
    holds images only, and no link, not even one correctly signed, reaches an answer."""
    srv = await inprocess(FAKE_CONFIG)
    service = srv.app.state.service
    headers = {**srv.auth(), "Idempotency-Key": "kept-apart"}
    body = {"model": "fake-image", "prompt": "kept apart", "response_format": "b64_json"}
    first = await srv.client.post("/v1/images/generations", headers=headers, json=body)
    assert first.status_code == 200, first.text
    await _url_image(srv)  # and one image in the image store beside it

    answers = [p for p in (srv.data_dir / "answers").rglob("*") if p.is_file()]
    assert [p.suffix for p in answers] == [".json"]
    images = [p for p in (srv.data_dir / "images").rglob("*") if p.is_file()]
    assert len(images) == 1 and images[0].suffix == ".png"

    answer = answers[0].name
    link, _ = service.signer.sign(answer)
    for path in (link, f"/v1/media/{answer}"):
        got = await srv.client.get(path)
        assert got.status_code == 404, got.text
        assert got.json()["error"]["code"] == "not_found"

    replay = await srv.client.post("/v1/images/generations", headers=headers, json=body)
    assert replay.status_code == 200 and replay.json() == first.json()
