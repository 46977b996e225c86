"""URLSigner (signed, expiring links) and LocalImageStore (files on disk, swept on expiry)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from imagegate.errors import Forbidden, NotFound
from imagegate.storage import LocalImageStore, StoredImage, URLSigner
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


# --- LocalImageStore -------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> LocalImageStore:
    return LocalImageStore(tmp_path / "images", ttl_seconds=100)


def test_store_creates_its_root_by_the_first_put(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "images"
    store = LocalImageStore(root, ttl_seconds=1)
    assert store.sweep() == 0  # sweeping a store that has no folder yet is fine
    stored = store.put(b"x", "png")
    assert root.is_dir()
    assert store.get(stored.name).path.read_bytes() == b"x"


@pytest.mark.parametrize("ext, media_type", [
    ("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp")])
def test_put_get_round_trip(store: LocalImageStore, ext: str, media_type: str) -> None:
    stored = store.put(b"image-bytes-" + ext.encode(), ext)
    assert isinstance(stored, StoredImage)
    assert stored.name.endswith("." + ext)
    assert stored.path.read_bytes() == b"image-bytes-" + ext.encode()
    assert stored.path.is_relative_to(store.root)
    got = store.get(stored.name)
    assert got.path == stored.path
    assert got.media_type == media_type
    assert not list(store.root.rglob("*.part"))  # no partial file left behind


def test_put_mints_distinct_unguessable_names(store: LocalImageStore) -> None:
    names = {store.put(b"x", "png").name for _ in range(50)}
    assert len(names) == 50
    for name in names:
        stem = name.rsplit(".", 1)[0]
        assert len(stem) >= 22
        assert "/" not in name and ".." not in name
        store.get(name)


def test_get_unknown_name(store: LocalImageStore) -> None:
    with pytest.raises(NotFound) as info:
        store.get("A" * 24 + ".png")
    assert (info.value.status, info.value.code) == (404, "not_found")


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
def test_get_rejects_malformed_names(store: LocalImageStore, bad: str) -> None:
    real = store.put(b"secret", "png")
    stem = real.name.rsplit(".", 1)[0]
    name = bad.format(stem=stem, name=real.name, short="A" * 21, long="A" * 65)
    with pytest.raises(NotFound):
        store.get(name)


def test_get_checks_the_name_before_the_disk(store: LocalImageStore, tmp_path: Path) -> None:
    """A file that exists but whose name breaks the pattern is still not served."""
    (store.root / "ab").mkdir(parents=True)
    (store.root / "ab" / "ab.png").write_bytes(b"x")
    with pytest.raises(NotFound):
        store.get("ab.png")
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"x")
    with pytest.raises(NotFound):
        store.get("../../outside.png")


def test_id_length_bounds(store: LocalImageStore) -> None:
    for length in (22, 64):
        name = "A" * length + ".png"
        path = store.root / name[:2] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        assert store.get(name).path == path


def _age(path: Path, seconds: float, now: float) -> None:
    os.utime(path, (now - seconds, now - seconds))


def test_sweep_removes_only_expired(store: LocalImageStore) -> None:
    """TTL is 100 s; ages keep a few seconds off the boundary so a second of grace is allowed."""
    now = time.time()
    old = [store.put(b"old", "png") for _ in range(3)]
    fresh = [store.put(b"new", "webp") for _ in range(2)]
    for image in old:
        _age(image.path, 105, now)
    for image in fresh:
        _age(image.path, 95, now)
    assert store.sweep(now=now) == 3
    for image in old:
        assert not image.path.exists()
        with pytest.raises(NotFound):
            store.get(image.name)
    for image in fresh:
        assert store.get(image.name).path.read_bytes() == b"new"
    assert store.sweep(now=now) == 0  # nothing left to remove


def test_sweep_uses_wall_clock_by_default(store: LocalImageStore) -> None:
    image = store.put(b"x", "png")
    assert store.sweep() == 0
    _age(image.path, 1000, time.time())
    assert store.sweep() == 1
    assert not image.path.exists()


def test_sweep_later_now_expires_everything(store: LocalImageStore) -> None:
    images = [store.put(b"x", "jpeg") for _ in range(4)]
    assert store.sweep(now=time.time() + 105) == 4
    assert not any(i.path.exists() for i in images)


def test_sweep_removes_stale_partial_writes(store: LocalImageStore) -> None:
    now = time.time()
    keep = store.put(b"x", "png")
    shard = keep.path.parent
    stale = shard / (keep.name[:2] + "Z" * 22 + ".png.part")
    stale.write_bytes(b"half")
    _age(stale, 500, now)
    recent = shard / (keep.name[:2] + "Y" * 22 + ".png.part")
    recent.write_bytes(b"half")  # a write in progress right now
    assert store.sweep(now=now) == 1
    assert not stale.exists()
    assert recent.exists()
    assert keep.path.exists()


def test_sweep_ignores_stray_files_in_root(store: LocalImageStore) -> None:
    now = time.time()
    store.root.mkdir(parents=True)
    stray = store.root / "README"
    stray.write_text("not an image")
    _age(stray, 10_000, now)
    image = store.put(b"x", "png")
    _age(image.path, 10_000, now)
    assert store.sweep(now=now) == 1
    assert stray.exists()


def test_sweep_empty_store(store: LocalImageStore) -> None:
    assert store.sweep() == 0


def test_stored_files_are_not_executable(store: LocalImageStore) -> None:
    mode = store.put(b"x", "png").path.stat().st_mode
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
    store = LocalImageStore(tmp_path / "images", ttl_seconds=ttl)
    signer = URLSigner(SECRET, ttl_seconds=ttl)
    t = NOW + fraction
    stored = store.put(b"x", "png")
    os.utime(stored.path, (t, t))  # written at t, signed at t
    link, expires = signer.sign(stored.name, now=t)
    last_valid = expires - 0.0005
    signer.verify(*split(link), now=last_valid)
    assert store.sweep(now=last_valid) == 0
    assert store.get(stored.name).path.exists()
    assert store.sweep(now=expires + 5) == 1  # and it does go once the link is dead
