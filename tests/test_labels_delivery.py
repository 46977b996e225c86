"""AI-content labels on every way an image leaves the server (issue: GB 45438-2025 and C2PA).

For each delivery path (a generation's link and base64, a streamed final image, chat's data
URL, an edit, a variation, the Responses API, a relayed upstream image) and each format
(PNG, JPEG, WebP), the delivered file is decoded and read as an outside reader would: exactly
one TC260 AIGC label, with the configured producer and a ProduceID that is the request's usage
row's id plus the image's index, and the same pixels as an unlabelled server's answer for the
same seed. Then: an account's own producer, the visible mark by account, key and request,
C2PA credentials that validate, and an upstream's credentials kept as our ingredient.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from c2pa_certs import SigningChain, make_chain
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image
from upstream_server import serve_app

from imagegate.labels.credentials import CredentialSigner, read_credentials
from imagegate.labels.inspect import inspect_file
from imagegate.labels.mark import MIN_TEXT_HEIGHT

FORMATS = ("png", "jpeg", "webp")
PRODUCER = "示例科技 ICP备2025000001号"
SEED = 1234


def upstream_png(signed_by: CredentialSigner | None = None) -> bytes:
    image = Image.new("RGB", (64, 64))
    image.putdata([(x * 4, y * 4, (x + y) * 2) for y in range(64) for x in range(64)])
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    data = buffer.getvalue()
    if signed_by is not None:
        data = signed_by.sign(data, "png", model="upstream-model", title="upstream.png")
    return data


@pytest.fixture(scope="module")
def upstream_chain() -> SigningChain:
    return make_chain("upstream test", "upstream signer")


@pytest.fixture(scope="module")
def upstream(upstream_chain: SigningChain) -> Iterator[str]:
    """An upstream in OpenAI's images format: model `plain` answers a plain PNG, `signed` a PNG
    with the upstream's own C2PA manifest."""
    signer = CredentialSigner(upstream_chain.chain_pem, upstream_chain.key_pem,
                              claim_generator="upstream-test")
    answers = {"plain": upstream_png(), "signed": upstream_png(signer)}
    app = FastAPI()

    @app.post("/v1/images/generations")
    async def generations(request: Request) -> JSONResponse:
        body = await request.json()
        data = answers[body["model"]]
        return JSONResponse({"created": int(time.time()),
                             "data": [{"b64_json": base64.b64encode(data).decode()}]})

    with serve_app(app) as base_url:
        yield base_url


def config(upstream: str) -> str:
    return f"""
[models.relayed]
backend = "upstream"
[models.relayed.capabilities]
sizes = ["64x64"]
default_size = "64x64"
output_formats = ["png", "jpeg", "webp"]
[[models.relayed.deployments]]
provider = "openai_images"
base_url = "{upstream}/v1"
upstream_model = "plain"

[models.relayed-signed]
backend = "upstream"
[models.relayed-signed.capabilities]
sizes = ["64x64"]
default_size = "64x64"
[[models.relayed-signed.deployments]]
provider = "openai_images"
base_url = "{upstream}/v1"
upstream_model = "signed"
"""


@pytest_asyncio.fixture(loop_scope="module")
async def labelled(shared_inprocess: Any, upstream: str) -> Any:
    return await shared_inprocess(config(upstream), labels_producer=PRODUCER)


@pytest_asyncio.fixture(loop_scope="module")
async def unlabelled(shared_inprocess: Any, upstream: str) -> Any:
    return await shared_inprocess(config(upstream), labels_implicit=False)


# ---- the paths -----------------------------------------------------------------------------

GENERATION = {"model": "tiny-sd", "prompt": "a lighthouse", "size": "64x64", "seed": SEED}


def png_bytes(size: tuple[int, int] = (64, 64), colour: tuple[int, int, int] = (90, 140, 60)
              ) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


async def deliver(srv: Any, path: str, fmt: str, headers: dict[str, str] | None = None,
                  **extra: Any) -> tuple[list[bytes], str]:
    """The image files one request of `path` delivered, and its request id."""
    client: httpx.AsyncClient = srv.client
    auth = headers or srv.auth()
    if path == "url":
        answer = await client.post("/v1/images/generations", headers=auth, json={
            **GENERATION, "output_format": fmt, "response_format": "url", **extra})
        assert answer.status_code == 200, answer.text
        files = []
        for item in answer.json()["data"]:
            link = httpx.URL(item["url"])
            fetched = await client.get(link.raw_path.decode())
            assert fetched.status_code == 200
            files.append(fetched.content)
        return files, answer.headers["x-request-id"]
    if path == "b64_json":
        answer = await client.post("/v1/images/generations", headers=auth, json={
            **GENERATION, "output_format": fmt, "response_format": "b64_json", **extra})
    elif path == "stream":
        answer = await client.post("/v1/images/generations", headers=auth, json={
            **GENERATION, "output_format": fmt, "stream": True, "partial_images": 1, **extra})
        assert answer.status_code == 200, answer.text
        events = [json.loads(line[6:]) for line in answer.text.splitlines()
                  if line.startswith("data: ")]
        finals = [e for e in events if e["type"] == "image_generation.completed"]
        return [base64.b64decode(e["b64_json"]) for e in finals], \
            answer.headers["x-request-id"]
    elif path == "chat":
        answer = await client.post("/v1/chat/completions", headers=auth, json={
            "model": "tiny-sd", "seed": SEED, "messages": [
                {"role": "user", "content": "a lighthouse"}],
            "image_config": {"aspect_ratio": "1:1", "image_size": "0.5K",
                             "output_format": fmt}, **extra})
        assert answer.status_code == 200, answer.text
        urls = [i["image_url"]["url"] for i in answer.json()["choices"][0]["message"]["images"]]
        assert all(u.startswith("data:image/") for u in urls)
        return [base64.b64decode(u.split(",", 1)[1]) for u in urls], \
            answer.headers["x-request-id"]
    elif path == "edit":
        answer = await client.post("/v1/images/edits", headers=auth, data={
            "model": "tiny-sd", "prompt": "at night", "seed": str(SEED), "size": "64x64",
            "output_format": fmt, "response_format": "b64_json",
            **{k: str(v).lower() for k, v in extra.items()}},
            files={"image": ("in.png", png_bytes(), "image/png")})
    elif path == "variation":
        answer = await client.post("/v1/images/variations", headers=auth, data={
            "model": "tiny-sd", "seed": str(SEED), "size": "64x64", "output_format": fmt,
            "response_format": "b64_json"},
            files={"image": ("in.png", png_bytes(), "image/png")})
    elif path == "responses":
        answer = await client.post("/v1/responses", headers=auth, json={
            "model": "tiny-sd", "input": "a lighthouse", "tools": [{
                "type": "image_generation", "size": "64x64", "output_format": fmt,
                "seed": SEED}]})
        assert answer.status_code == 200, answer.text
        calls = [o for o in answer.json()["output"] if o["type"] == "image_generation_call"]
        return [base64.b64decode(c["result"]) for c in calls], answer.headers["x-request-id"]
    elif path == "relayed":
        answer = await client.post("/v1/images/generations", headers=auth, json={
            "model": "relayed", "prompt": "a lighthouse", "output_format": fmt,
            "response_format": "b64_json", **extra})
    else:
        raise AssertionError(path)
    assert answer.status_code == 200, answer.text
    return [base64.b64decode(d["b64_json"]) for d in answer.json()["data"]], \
        answer.headers["x-request-id"]


def pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGBA").tobytes()


PATHS = ("url", "b64_json", "stream", "chat", "edit", "variation", "responses", "relayed")
HOSTED = {"url", "stream", "chat"}
"""Paths whose images this server also hosts behind a link (a stream's default
`response_format` is `url`; chat's `content` links each image)."""


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("path", PATHS)
async def test_every_delivery_carries_one_label_and_the_same_pixels(
        labelled: Any, unlabelled: Any, path: str, fmt: str) -> None:
    files, request_id = await deliver(labelled, path, fmt)
    plain, _ = await deliver(unlabelled, path, fmt)
    assert files and len(files) == len(plain)
    for index, (data, unlabelled_data) in enumerate(zip(files, plain)):
        report = inspect_file(data)
        assert report["format"] == fmt
        assert report["implicit_label_count"] == 1, report
        label = report["implicit_labels"][0]
        assert label["Label"] == "1"
        assert label["ContentProducer"] == PRODUCER
        assert label["ProduceID"] == f"{request_id}.{index}"
        if path in HOSTED:  # this server hosts it: the propagator is named with the file
            assert label["ContentPropagator"] == PRODUCER
            assert label["PropagateID"].endswith(f".{fmt}")
        else:
            assert label["ContentPropagator"] == label["PropagateID"] == ""
        assert report["visible_mark"] is None
        assert inspect_file(unlabelled_data)["implicit_label_count"] == 0
        assert pixels(data) == pixels(unlabelled_data), "labelling changed the pixels"


async def test_the_produce_id_leads_to_the_usage_row(labelled: Any) -> None:
    files, request_id = await deliver(labelled, "b64_json", "png", n=2)
    usage = await labelled.client.get("/admin/usage", headers=labelled.auth())
    rows = [r for r in usage.json()["data"] if r["request_id"] == request_id]
    assert len(rows) == 1 and rows[0]["images_delivered"] == 2
    ids = [inspect_file(f)["implicit_labels"][0]["ProduceID"] for f in files]
    assert ids == [f"{rows[0]['request_id']}.0", f"{rows[0]['request_id']}.1"]


async def test_an_account_labels_as_its_own_producer(labelled: Any) -> None:
    srv = labelled
    name = f"reseller-{time.monotonic_ns()}"
    created = await srv.client.post("/admin/accounts", headers=srv.auth(), json={
        "name": name, "unlimited": True, "label_producer": "Reseller Ltd, filing 42"})
    assert created.status_code == 201, created.text
    assert created.json()["label_producer"] == "Reseller Ltd, filing 42"
    key = (await srv.client.post("/admin/keys", headers=srv.auth(), json={
        "account": name, "name": "k"})).json()["key"]
    files, _ = await deliver(srv, "b64_json", "png", headers=srv.auth(key))
    assert inspect_file(files[0])["implicit_labels"][0]["ContentProducer"] == \
        "Reseller Ltd, filing 42"
    # Cleared: back to the server's.
    patched = await srv.client.patch(f"/admin/accounts/{name}", headers=srv.auth(),
                                     json={"label_producer": None})
    assert patched.status_code == 200 and patched.json()["label_producer"] is None
    files, _ = await deliver(srv, "b64_json", "png", headers=srv.auth(key))
    assert inspect_file(files[0])["implicit_labels"][0]["ContentProducer"] == PRODUCER


# ---- the visible mark ------------------------------------------------------------------------


def changed_box(marked: bytes, plain: bytes) -> tuple[int, int, int, int] | None:
    a = Image.open(io.BytesIO(marked)).convert("RGB")
    b = Image.open(io.BytesIO(plain)).convert("RGB")
    from PIL import ImageChops

    return ImageChops.difference(a, b).getbbox()


async def test_the_visible_mark_follows_the_request_key_and_account(
        labelled: Any, unlabelled: Any) -> None:
    srv = labelled
    size = {"size": "256x256"}
    plain, _ = await deliver(srv, "b64_json", "png", **size)
    assert inspect_file(plain[0])["visible_mark"] is None

    asked, _ = await deliver(srv, "b64_json", "png", ai_mark=True, **size)
    report = inspect_file(asked[0])
    assert report["visible_mark"] == "AI生成"
    box = changed_box(asked[0], plain[0])
    assert box is not None
    left, top, right, bottom = box
    assert left > 128 and top > 128 and right <= 256 and bottom <= 256  # bottom-right corner
    assert (bottom - top) >= MIN_TEXT_HEIGHT * 256  # the plate holds text >= 5% tall
    # (tests/test_labels_mark.py measures the glyphs' own height)

    # An account that requires it: every request gets it, and a request cannot decline.
    name = f"marked-{time.monotonic_ns()}"
    await srv.client.post("/admin/accounts", headers=srv.auth(), json={
        "name": name, "unlimited": True, "visible_mark": True})
    key = (await srv.client.post("/admin/keys", headers=srv.auth(), json={
        "account": name, "name": "k"})).json()["key"]
    for extra in ({}, {"ai_mark": False}):
        files, _ = await deliver(srv, "b64_json", "png", headers=srv.auth(key), **size,
                                 **extra)
        assert inspect_file(files[0])["visible_mark"] == "AI生成", extra
    # A key of that account that says no.
    quiet = (await srv.client.post("/admin/keys", headers=srv.auth(), json={
        "account": name, "name": "quiet", "visible_mark": False})).json()["key"]
    files, _ = await deliver(srv, "b64_json", "png", headers=srv.auth(quiet), **size)
    assert inspect_file(files[0])["visible_mark"] is None
    assert pixels(files[0]) == pixels(plain[0])

    # Streams, edits and relayed images get it too.
    for path in ("stream", "edit", "relayed"):
        files, _ = await deliver(srv, path, "png", ai_mark=True)
        assert inspect_file(files[0])["visible_mark"] == "AI生成", path


async def test_a_request_cannot_choose_where_the_server_says_so(inprocess: Any) -> None:
    srv = await inprocess(labels_request_mark=False)
    files, _ = await deliver(srv, "b64_json", "png", ai_mark=True)
    assert inspect_file(files[0])["visible_mark"] is None


async def test_labels_can_be_turned_off(unlabelled: Any) -> None:
    files, _ = await deliver(unlabelled, "b64_json", "jpeg")
    report = inspect_file(files[0])
    assert report["implicit_label_count"] == 0 and report["credentials"] is None


# ---- C2PA ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def our_chain() -> SigningChain:
    return make_chain("imagegate operator", "imagegate signer")


@pytest_asyncio.fixture(loop_scope="module")
async def signing(shared_inprocess: Any, upstream: str, our_chain: SigningChain,
                  tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("c2pa")
    (folder / "chain.pem").write_bytes(our_chain.chain_pem)
    (folder / "key.pem").write_bytes(our_chain.key_pem)
    return await shared_inprocess(config(upstream), labels_producer=PRODUCER,
                                  labels_c2pa_certificate=str(folder / "chain.pem"),
                                  labels_c2pa_private_key=str(folder / "key.pem"))


@pytest.mark.parametrize("fmt", FORMATS)
async def test_signed_credentials_validate_and_cover_the_label(
        signing: Any, unlabelled: Any, our_chain: SigningChain, fmt: str) -> None:
    files, request_id = await deliver(signing, "b64_json", fmt)
    plain, _ = await deliver(unlabelled, "b64_json", fmt)
    credentials = read_credentials(files[0], trust_anchors=our_chain.root_pem)
    assert credentials is not None and credentials["valid"], credentials
    assert credentials["validation_state"] == "Trusted"
    assert credentials["claim_generator"].startswith("imagegate")
    assert "c2pa.created" in credentials["actions"]
    assert credentials["digital_source_type"].endswith("trainedAlgorithmicMedia")
    report = inspect_file(files[0])
    assert report["implicit_labels"][0]["ProduceID"] == f"{request_id}.0"
    assert pixels(files[0]) == pixels(plain[0])


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
async def test_an_upstreams_credentials_are_kept_as_our_ingredient(
        signing: Any, our_chain: SigningChain, fmt: str) -> None:
    answer = await signing.client.post("/v1/images/generations", headers=signing.auth(), json={
        "model": "relayed-signed", "prompt": "a lighthouse", "output_format": fmt,
        "response_format": "b64_json"})
    assert answer.status_code == 200, answer.text
    data = base64.b64decode(answer.json()["data"][0]["b64_json"])
    credentials = read_credentials(data, trust_anchors=our_chain.root_pem)
    assert credentials is not None and credentials["valid"], credentials
    assert credentials["claim_generator"].startswith("imagegate")
    [parent] = credentials["ingredients"]
    assert parent["relationship"] == "parentOf" and parent["has_manifest"]
    assert parent["claim_generator"].startswith("upstream-test")
    assert inspect_file(data)["implicit_label_count"] == 1


async def test_without_a_signer_an_upstreams_signed_file_passes_untouched(
        labelled: Any, upstream_chain: SigningChain) -> None:
    answer = await labelled.client.post("/v1/images/generations", headers=labelled.auth(),
                                        json={"model": "relayed-signed", "prompt": "x",
                                              "output_format": "png",
                                              "response_format": "b64_json"})
    data = base64.b64decode(answer.json()["data"][0]["b64_json"])
    credentials = read_credentials(data, trust_anchors=upstream_chain.root_pem)
    assert credentials is not None and credentials["valid"], credentials
    assert credentials["claim_generator"].startswith("upstream-test")


# ---- reading labels back over HTTP -------------------------------------------------------------


async def test_the_verify_endpoint_reads_labels_back(labelled: Any) -> None:
    srv = labelled
    files, request_id = await deliver(srv, "b64_json", "webp", ai_mark=True)
    for request in (
            {"content": files[0], "headers": {**srv.auth(), "content-type": "image/webp"}},
            {"files": {"file": ("x.webp", files[0], "image/webp")}, "headers": srv.auth()}):
        answer = await srv.client.post("/v1/labels/verify", **request)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["object"] == "label_report" and body["format"] == "webp"
        assert body["implicit_labels"][0]["ProduceID"] == f"{request_id}.0"
        assert body["visible_mark"] == "AI生成"
    unlabelled = await srv.client.post("/v1/labels/verify", content=png_bytes(), headers={
        **srv.auth(), "content-type": "image/png"})
    assert unlabelled.json()["implicit_label_count"] == 0
    assert unlabelled.json()["credentials"] is None
    for bad in (b"", b"not an image", b"\x89PNG\r\n\x1a\n\x00\x00"):
        refused = await srv.client.post("/v1/labels/verify", content=bad, headers={
            **srv.auth(), "content-type": "image/png"})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "invalid_image"
    assert (await srv.client.post("/v1/labels/verify", content=files[0])).status_code == 401


def test_the_mark_fits_any_image_a_provider_hands_over() -> None:
    from imagegate.labelling import Labeller
    from imagegate.settings import LabelSettings

    labeller = Labeller(LabelSettings())
    plan = labeller.plan(None, "req_x", "m", ai_mark=True)
    assert plan.visible_mark
    palette = Image.new("P", (256, 256))
    marked = labeller.mark(palette, plan)
    assert isinstance(marked, Image.Image) and marked.mode == "RGB"
    assert marked.getbbox() is not None  # ink on a black image
    tiny = Image.new("RGB", (12, 12))
    assert labeller.mark(tiny, plan) is tiny  # too small for legible text: left as it is
