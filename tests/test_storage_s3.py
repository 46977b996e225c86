"""The S3 store on a real S3 wire protocol (moto's server on loopback, tests/s3_server.py): where
objects go in the bucket, the sweep by LastModified, start-up refusals; and in-process apps on
the S3 backend: links served (GET and HEAD) by the app that made them and by another replica on
the same bucket, Idempotency-Key answers replayed from the bucket, the background sweeper,
presigned links fetched from the store itself, and a store that fails mid-request."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import s3_server as s3_fixtures
from pydantic import ValidationError
from s3_server import S3Bucket

from imagegate.errors import NotFound
from imagegate.settings import S3Settings, Settings
from imagegate.storage import ANSWER_TYPES, IMAGE_TYPES
from imagegate.storage.backends import open_stores
from imagegate.storage.base import StorageUnavailable
from imagegate.storage.s3 import PresignedLinks, S3Store

s3_server, s3_bucket = s3_fixtures.s3_server, s3_fixtures.s3_bucket  # this module's fixtures

UNIT = 10_000  # micros per fake-image
FAKE_CONFIG = """
[providers]
fake = "fake_providers:FakeProvider"

[models.fake-image]
backend = "fake"
[models.fake-image.pricing]
per_image = "0.01"
"""
SECRET = "s3-tests-shared-url-secret-0123456789"


def _s3_settings(bucket: S3Bucket, **fields: Any) -> S3Settings:
    return S3Settings(bucket=bucket.name, endpoint_url=bucket.server.endpoint,
                      prefix=bucket.prefix, **fields)


def _store(bucket: S3Bucket, key_prefix: str = "images", ttl: int = 100,
           **fields: Any) -> S3Store:
    types = ANSWER_TYPES if key_prefix == "answers" else IMAGE_TYPES
    return S3Store(_s3_settings(bucket, **fields), key_prefix, ttl, types)


# --- the store on the bucket -------------------------------------------------------------------

def test_objects_live_under_the_prefix_with_their_media_type(s3_bucket: S3Bucket) -> None:
    images, answers = _store(s3_bucket), _store(s3_bucket, "answers")
    png, webp = images.put(b"png-bytes", "png"), images.put(b"webp-bytes", "webp")
    answer = answers.put(b'{"data": []}', "json")
    assert s3_bucket.keys() == sorted([f"gw/images/{png}", f"gw/images/{webp}",
                                       f"gw/answers/{answer}"])
    client = s3_bucket.server.client()
    got = client.get_object(Bucket=s3_bucket.name, Key=f"gw/images/{webp}")
    assert got["ContentType"] == "image/webp" and got["Body"].read() == b"webp-bytes"
    assert client.head_object(Bucket=s3_bucket.name,
                              Key=f"gw/answers/{answer}")["ContentType"] == "application/json"
    # the two stores do not see each other's objects, even by a name that fits their rules
    with pytest.raises(NotFound):
        images.read(answer.replace(".json", ".png"))


def test_opened_image_streams_in_chunks(s3_bucket: S3Bucket) -> None:
    store = _store(s3_bucket)
    data = os.urandom(700 * 1024)  # several chunks of 256 KiB
    opened = store.open(store.put(data, "png"))
    assert opened.size == len(data) and opened.path is None
    chunks = list(opened.chunks)
    assert len(chunks) >= 2 and b"".join(chunks) == data


def test_sweep_removes_what_is_old_under_its_own_prefix_only(s3_bucket: S3Bucket) -> None:
    images, answers = _store(s3_bucket, ttl=100), _store(s3_bucket, "answers", ttl=100)
    kept_answer = answers.put(b"{}", "json")
    names = [images.put(b"x", "png") for _ in range(3)]
    client = s3_bucket.server.client()
    # not imagegate's name pattern, but under its prefix: the prefix is the gateway's
    client.put_object(Bucket=s3_bucket.name, Key="gw/images/stray.txt", Body=b"?")
    client.put_object(Bucket=s3_bucket.name, Key="other/keep.png", Body=b"?")
    assert images.sweep(now=time.time() + 90) == 0
    assert images.sweep(now=time.time() + 110) == 4
    assert s3_bucket.keys() == sorted([f"gw/answers/{kept_answer}", "other/keep.png"])
    for name in names:
        with pytest.raises(NotFound):
            images.open(name)
    assert answers.sweep(now=time.time() + 110) == 1


def test_sweep_off_leaves_expiry_to_a_lifecycle_rule(s3_bucket: S3Bucket) -> None:
    store = _store(s3_bucket, ttl=1, sweep=False)
    name = store.put(b"x", "png")
    assert store.sweep(now=time.time() + 10_000) == 0
    assert store.read(name) == b"x"


def test_presigned_url_serves_the_object_to_anyone(s3_bucket: S3Bucket) -> None:
    store = _store(s3_bucket)
    name = store.put(b"presigned-bytes", "jpeg")
    signer = PresignedLinks(store, SECRET.encode(), ttl_seconds=300)
    url, expires = signer.sign(name)
    assert url.startswith(f"{s3_bucket.server.endpoint}/{s3_bucket.name}/gw/images/{name}?")
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["300"]
    assert time.time() + 299 <= expires <= time.time() + 301
    got = httpx.get(url)  # no credentials: the signature in the URL is the permission
    assert got.status_code == 200 and got.content == b"presigned-bytes"
    assert got.headers["content-type"] == "image/jpeg"
    # an imagegate link for the same name still verifies (links from before the switch)
    link, link_expires = super(PresignedLinks, signer).sign(name)
    parts = parse_qs(urlsplit(link).query)
    signer.verify(name, parts["expires"][0], parts["sig"][0])


def test_presigned_links_are_refused_past_seven_days(s3_bucket: S3Bucket) -> None:
    with pytest.raises(ValueError, match="7 days"):
        PresignedLinks(_store(s3_bucket), SECRET.encode(), ttl_seconds=8 * 24 * 3600)


def test_a_bucket_that_is_gone_is_unavailable_not_missing(s3_bucket: S3Bucket) -> None:
    """A PUT or a listing answered 404 means the bucket, not an image: 503, not 404."""
    store = _store(s3_bucket)
    s3_bucket.server.client().delete_bucket(Bucket=s3_bucket.name)
    with pytest.raises(StorageUnavailable) as info:
        store.put(b"x", "png")
    assert (info.value.status, info.value.code) == (503, "storage_unavailable")
    assert s3_bucket.name not in info.value.message  # the details go to the log only
    with pytest.raises(StorageUnavailable):
        store.sweep()


# --- start-up --------------------------------------------------------------------------------

def _settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings.load(None, data_dir=tmp_path, url_secret=SECRET, **values)


def test_the_settings_have_flat_names(s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Path) -> None:
    monkeypatch.setenv("IMAGEGATE_STORAGE_BACKEND", "s3")
    monkeypatch.setenv("IMAGEGATE_S3_BUCKET", s3_bucket.name)
    monkeypatch.setenv("IMAGEGATE_S3_ENDPOINT_URL", s3_bucket.server.endpoint)
    monkeypatch.setenv("IMAGEGATE_S3_PRESIGNED_LINKS", "true")
    monkeypatch.setenv("IMAGEGATE_S3_SWEEP", "false")
    storage = Settings.load(None, data_dir=tmp_path).storage
    assert storage.backend == "s3"
    assert (storage.s3.bucket, storage.s3.endpoint_url, storage.s3.presigned_links,
            storage.s3.sweep, storage.s3.prefix) == (
        s3_bucket.name, s3_bucket.server.endpoint, True, False, "imagegate")
    images, answers, signer = open_stores(Settings.load(None, data_dir=tmp_path))
    assert isinstance(images, S3Store) and isinstance(answers, S3Store)
    assert isinstance(signer, PresignedLinks)


@pytest.mark.parametrize("url", ["not a url", "minio:9000", "ftp://minio", "http://",
                                 "http://minio:9000/?x=1"])
def test_a_malformed_endpoint_is_a_bad_setting(tmp_path: Path, url: str) -> None:
    """Checked with the settings (the S3 client would fail on it without saying why)."""
    with pytest.raises(ValidationError) as info:
        Settings.load(None, data_dir=tmp_path, s3_endpoint_url=url)
    assert "http:// or https:// URL" in str(info.value)


def test_the_default_is_the_local_disk(tmp_path: Path) -> None:
    images, answers, signer = open_stores(_settings(tmp_path))
    assert type(images).__name__ == type(answers).__name__ == "LocalStore"
    assert type(signer).__name__ == "URLSigner"


@pytest.mark.parametrize("change, expected", [
    ({"s3_bucket": "no-such-bucket-here"}, "NoSuchBucket"),
    ({"s3_bucket": ""}, "needs a bucket"),
    ({"s3_endpoint_url": "http://127.0.0.1:9"}, "cannot use the object store"),
])
def test_an_unusable_bucket_refuses_to_start(s3_bucket: S3Bucket, tmp_path: Path,
                                             change: dict[str, str], expected: str) -> None:
    with pytest.raises(ValueError) as info:
        open_stores(_settings(tmp_path, **{**s3_bucket.settings, **change}))
    message = str(info.value)
    assert expected in message and "\n" not in message
    assert "imagegate-test" not in message  # no credential in it


@pytest.mark.e2e  # runs `python -m imagegate serve` as a process
def test_serve_says_why_in_one_line(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    env.update(IMAGEGATE_DATA_DIR=str(tmp_path), IMAGEGATE_STORAGE_BACKEND="s3",
               IMAGEGATE_S3_BUCKET="missing-bucket-for-serve",
               IMAGEGATE_S3_ENDPOINT_URL=s3_bucket.server.endpoint, COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "imagegate", "serve", "--port", "1"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: cannot use the object store "
                                "s3://missing-bucket-for-serve/"), proc.stderr
    assert "NoSuchBucket" in lines[-1]
    assert "Traceback" not in proc.stderr


# --- in-process apps on the S3 backend ---------------------------------------------------------

async def _image_link(srv: Any, **body: Any) -> tuple[str, dict[str, Any]]:
    response = await srv.client.post("/v1/images/generations", headers=srv.auth(), json={
        "model": "fake-image", "prompt": "to the bucket", "response_format": "url", **body})
    assert response.status_code == 200, response.text
    item = response.json()["data"][0]
    return item["url"], item


async def _replicas(inprocess: Any, bucket: S3Bucket, tmp_path: Path) -> tuple[Any, Any]:
    """Two gateways as a deployment runs them: one database, one bucket, one url_secret."""
    shared = {"database_url": f"sqlite:///{tmp_path / 'shared.db'}", "url_secret": SECRET,
              **bucket.settings}
    return (await inprocess(FAKE_CONFIG, node_id="replica-a", **shared),
            await inprocess(FAKE_CONFIG, node_id="replica-b", **shared))


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def test_a_link_is_served_from_the_bucket_by_any_replica(
        inprocess: Any, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    first, second = await _replicas(inprocess, s3_bucket, tmp_path)
    url, _ = await _image_link(first)
    name = urlsplit(url).path.rsplit("/", 1)[1]
    assert s3_bucket.keys("images") == [f"gw/images/{name}"]
    assert not (first.data_dir / "images").exists()  # nothing on the local disk
    stored = s3_bucket.server.client().get_object(
        Bucket=s3_bucket.name, Key=f"gw/images/{name}")["Body"].read()

    for srv in (first, second):
        got = await srv.client.get(_path(url))
        assert got.status_code == 200, got.text
        assert got.content == stored and stored.startswith(b"\x89PNG")
        assert got.headers["content-type"] == "image/png"
        assert got.headers["content-length"] == str(len(stored))
        head = await srv.client.head(_path(url))
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(stored))
        assert head.headers["content-type"] == "image/png"
    # and the usual refusals, in the usual order
    assert (await second.client.get(_path(url).replace(name, "A" * 24 + ".png"))
            ).status_code == 404
    assert (await second.client.get(_path(url).split("?")[0])).status_code == 403


async def test_an_idempotent_answer_is_replayed_from_the_bucket(
        inprocess: Any, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    first, second = await _replicas(inprocess, s3_bucket, tmp_path)
    headers = {**first.auth(), "Idempotency-Key": "s3-replay"}
    body = {"model": "fake-image", "prompt": "once", "response_format": "b64_json"}
    answer = await first.client.post("/v1/images/generations", headers=headers, json=body)
    assert answer.status_code == 200, answer.text
    kept = s3_bucket.keys("answers")
    assert len(kept) == 1 and kept[0].endswith(".json")
    assert not (first.data_dir / "answers").exists()
    # the other replica has never seen the request: it replays what the first kept
    replay = await second.client.post("/v1/images/generations", headers=headers, json=body)
    assert replay.status_code == 200, replay.text
    assert replay.json() == answer.json()
    # an answer is never media, even signed
    answer_name = kept[0].rsplit("/", 1)[1]
    link, _ = second.app.state.service.signer.sign(answer_name)
    assert (await second.client.get(link)).status_code == 404


async def test_the_background_sweeper_empties_the_bucket(inprocess: Any,
                                                         s3_bucket: S3Bucket) -> None:
    srv = await inprocess(FAKE_CONFIG, url_secret=SECRET, url_ttl_seconds=1,
                          sweep_interval_seconds=0.2, **s3_bucket.settings)
    url, _ = await _image_link(srv)
    assert len(s3_bucket.keys("images")) == 1
    deadline = time.monotonic() + 60
    while s3_bucket.keys("images"):  # gone once 1 s + the grace have passed, whole seconds
        assert time.monotonic() < deadline, "the sweeper left an expired image"
        await asyncio.sleep(0.2)
    assert (await srv.client.get(_path(url))).status_code in (403, 404)


async def test_presigned_links_come_from_the_store(inprocess: Any,
                                                   s3_bucket: S3Bucket) -> None:
    srv = await inprocess(FAKE_CONFIG, url_secret=SECRET, s3_presigned_links=True,
                          **s3_bucket.settings)
    before = time.time()
    url, item = await _image_link(srv)
    assert url.startswith(f"{s3_bucket.server.endpoint}/{s3_bucket.name}/gw/images/")
    assert "X-Amz-Signature=" in url and "/v1/media/" not in url
    assert before + 3600 <= item["expires_at"] <= time.time() + 3601
    async with httpx.AsyncClient() as plain:
        got = await plain.get(url)
    assert got.status_code == 200
    assert got.content.startswith(b"\x89PNG") and got.headers["content-type"] == "image/png"
    # a stream's completed event carries the same kind of link
    streamed = await srv.client.post("/v1/images/generations", headers=srv.auth(), json={
        "model": "fake-image", "prompt": "streamed", "response_format": "url", "stream": True})
    assert streamed.status_code == 200, streamed.text
    events = [json.loads(line[len("data: "):]) for line in streamed.text.splitlines()
              if line.startswith("data: {")]
    links = [event["url"] for event in events if "url" in event]
    assert len(links) == 1 and links[0].startswith(f"{s3_bucket.server.endpoint}/"), events
    # the chat endpoint's markdown link is the store's URL as it is, not glued to the server's
    chat = await srv.client.post("/v1/chat/completions", headers=srv.auth(), json={
        "model": "fake-image", "messages": [{"role": "user", "content": "a chat image"}]})
    assert chat.status_code == 200, chat.text
    content = chat.json()["choices"][0]["message"]["content"]
    assert f"]({s3_bucket.server.endpoint}/{s3_bucket.name}/gw/images/" in content, content


async def test_a_failing_store_is_503_and_charges_nothing(inprocess: Any,
                                                          s3_bucket: S3Bucket) -> None:
    srv = await inprocess(FAKE_CONFIG, url_secret=SECRET, **s3_bucket.settings)
    made = await srv.client.post("/admin/accounts", headers=srv.auth(),
                                 json={"name": "s3-payer"})
    assert made.status_code == 201, made.text
    topped = await srv.client.post("/admin/accounts/s3-payer/topup", headers=srv.auth(),
                                   json={"amount_micros": 5 * UNIT})
    assert topped.status_code == 200, topped.text
    issued = await srv.client.post("/admin/keys", headers=srv.auth(),
                                   json={"account": "s3-payer", "name": "test"})
    key = issued.json()["key"]
    url, _ = await _image_link(srv)

    s3_bucket.server.client().delete_objects(Bucket=s3_bucket.name, Delete={
        "Objects": [{"Key": k} for k in s3_bucket.keys()]})
    s3_bucket.server.client().delete_bucket(Bucket=s3_bucket.name)

    response = await srv.client.post("/v1/images/generations", headers=srv.auth(key), json={
        "model": "fake-image", "prompt": "nowhere to put it", "response_format": "url"})
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "storage_unavailable")
    assert s3_bucket.name not in error["message"]
    account = (await srv.client.get("/admin/accounts/s3-payer", headers=srv.auth())).json()
    assert (account["balance_micros"], account["held_micros"]) == (5 * UNIT, 0)
    # a link to an image that is gone with its bucket: 404, not a 500
    assert (await srv.client.get(_path(url))).status_code == 404
