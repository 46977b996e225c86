"""What clients get without asking: `response_format` from the model, chat images as
data URLs and one choice per image, previews that say the resolved values, `x-should-retry`,
`/v1/models` availability, and a too-many-images 400 that names the field the client used.

Each request is sent as the client that depends on it sends it. In-process unless a real SDK
must meet a real server (the retry count), on apps the module's tests share: each reads only the
answers to its own requests (the rate-limited key is its test's own).
"""

from __future__ import annotations

import base64
import io
import json
import re
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from imagegate.api.middleware import retry_headers
from imagegate.catalog import Catalog
from imagegate.errors import APIError, ModelUnavailable

MODEL = "tiny-sd"

CONFIG = """
[models.gpt-image-tiny]
backend = "local"
[models.gpt-image-tiny.local]
source = "builtin:tiny-sd"
[models.gpt-image-tiny.capabilities]
max_reference_images = 1

[models.tiny-links]
backend = "local"
default_response_format = "url"
[models.tiny-links.local]
source = "builtin:tiny-sd"
[models.tiny-links.capabilities]
max_reference_images = 1
"""


def _png(width: int = 64, height: int = 64, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "PNG")
    return out.getvalue()


def _data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def _decode_data_url(url: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix), url[:60]
    return base64.b64decode(url[len(prefix):], validate=True)


async def _generate(srv: Any, **body: Any) -> dict[str, Any]:
    body = {"model": MODEL, "prompt": "a fox", "size": "64x64", **body}
    response = await srv.client.post("/v1/images/generations", json=body, headers=srv.auth())
    assert response.status_code == 200, response.text
    return response.json()


# --------------------------------------------------------------------------------------------
# 1. response_format from the model


def test_catalog_defaults_follow_openai() -> None:
    catalog = Catalog.from_config({"gpt-image-1.5": {"backend": "upstream"}})
    assert catalog.lookup("gpt-image-1").response_format("url") == "b64_json"
    assert catalog.lookup("gpt-image-1.5").response_format("url") == "b64_json"  # by its name
    assert catalog.lookup("dall-e-3").response_format("b64_json") == "url"
    assert catalog.lookup("dall-e-2").response_format("b64_json") == "url"
    assert catalog.lookup("imagen-3").response_format("url") == "url"  # vendors' Images API docs


async def test_generation_default_comes_from_the_model(shared_inprocess) -> None:
    srv = await shared_inprocess(config=CONFIG)
    # OpenAI's documented gpt-image-1 example reads data[0].b64_json without asking for it.
    gpt = await _generate(srv, model="gpt-image-tiny")
    assert "url" not in gpt["data"][0]
    assert _size(base64.b64decode(gpt["data"][0]["b64_json"])) == (64, 64)
    # DALL-E-style and other models: a link (as vendors' DALL-E-compatible Images API docs say).
    plain = await _generate(srv)
    assert plain["data"][0]["url"].startswith("http://testserver/v1/media/")
    assert "b64_json" not in plain["data"][0]
    # Asked for explicitly: always as asked.
    asked = await _generate(srv, model="gpt-image-tiny", response_format="url")
    assert "url" in asked["data"][0]


async def test_server_and_model_settings(shared_inprocess) -> None:
    srv = await shared_inprocess(config=CONFIG, images_response_format="b64_json")
    assert "b64_json" in (await _generate(srv))["data"][0]  # the server's setting
    assert "url" in (await _generate(srv, model="tiny-links"))["data"][0]  # the model's own


async def test_edits_answer_base64_for_any_model(shared_inprocess) -> None:
    """The AI SDK's `generateImage({prompt: {text, images}})`: multipart with `image`, no
    `response_format`, whatever the model; it reads `b64_json`."""
    srv = await shared_inprocess(config=CONFIG)
    for model in (MODEL, "gpt-image-tiny"):
        response = await srv.client.post(
            "/v1/images/edits", headers=srv.auth(),
            data={"model": model, "prompt": "make it snow", "n": "1", "size": "64x64"},
            files=[("image", ("in.png", _png(), "image/png"))])
        assert response.status_code == 200, response.text
        item = response.json()["data"][0]
        assert "url" not in item and _size(base64.b64decode(item["b64_json"])) == (64, 64)
    # A model whose catalog says `url` keeps it for edits too (as DALL-E 2 does at OpenAI).
    response = await srv.client.post(
        "/v1/images/edits", headers=srv.auth(),
        data={"model": "tiny-links", "prompt": "snow", "size": "64x64"},
        files=[("image", ("in.png", _png(), "image/png"))])
    assert "url" in response.json()["data"][0]


async def test_variations_keep_links(shared_inprocess) -> None:
    srv = await shared_inprocess()
    response = await srv.client.post(
        "/v1/images/variations", headers=srv.auth(), data={"model": MODEL, "size": "64x64"},
        files=[("image", ("in.png", _png(), "image/png"))])
    assert response.status_code == 200, response.text
    assert "url" in response.json()["data"][0]


# --------------------------------------------------------------------------------------------
# 2 and 4. chat: data URLs in `images`, a link in `content`, one choice per image


def _chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "a fox"}],
            "modalities": ["image", "text"], "num_inference_steps": 1,
            "image_config": {"image_size": "0.5K", **extra.pop("image_config", {})}, **extra}


async def _chat(srv: Any, body: dict[str, Any]) -> dict[str, Any]:
    response = await srv.client.post("/v1/chat/completions", json=body, headers=srv.auth())
    assert response.status_code == 200, response.text
    return response.json()


async def test_chat_images_are_data_urls_as_openrouter_sends_them(shared_inprocess) -> None:
    """The OpenRouter AI SDK provider base64-decodes `images[].image_url.url`."""
    srv = await shared_inprocess()
    completion = await _chat(srv, _chat_body())
    message = completion["choices"][0]["message"]
    inline = _decode_data_url(message["images"][0]["image_url"]["url"])
    links = re.findall(r"!\[image\]\((http://testserver/v1/media/[^)]+)\)", message["content"])
    assert len(links) == 1  # the hosted copy, for chat UIs that render markdown
    hosted = await srv.client.get(links[0].removeprefix("http://testserver"))
    assert hosted.content == inline
    assert json.dumps(completion).count("base64,") == 1

    # Base64 asked: nothing hosted, still exactly one copy of the base64.
    completion = await _chat(srv, _chat_body(image_config={"output_format": "b64_json"}))
    message = completion["choices"][0]["message"]
    _decode_data_url(message["images"][0]["image_url"]["url"])
    assert "base64," not in message["content"] and "/v1/media/" not in message["content"]
    assert "`images`" in message["content"]
    assert json.dumps(completion).count("base64,") == 1


async def test_chat_image_links_setting(shared_inprocess) -> None:
    srv = await shared_inprocess(chat_image_links=True)
    message = (await _chat(srv, _chat_body()))["choices"][0]["message"]
    url = message["images"][0]["image_url"]["url"]
    assert url.startswith("http://testserver/v1/media/")
    assert f"![image]({url})" in message["content"]


async def test_chat_n_is_n_choices(shared_inprocess) -> None:
    srv = await shared_inprocess()
    completion = await _chat(srv, _chat_body(n=2))
    choices = completion["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    for choice in choices:
        assert len(choice["message"]["images"]) == 1
        assert choice["finish_reason"] == "stop"
        _decode_data_url(choice["message"]["images"][0]["image_url"]["url"])
    assert choices[0]["message"]["images"] != choices[1]["message"]["images"]


async def test_streamed_chat_n_chunks_carry_their_choice(shared_inprocess) -> None:
    srv = await shared_inprocess()
    body = _chat_body(n=2, stream=True, stream_options={"include_usage": True})
    response = await srv.client.post("/v1/chat/completions", json=body, headers=srv.auth())
    assert response.status_code == 200, response.text
    events = [line[len("data: "):] for line in response.text.splitlines()
              if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    images = {c["choices"][0]["index"]: c["choices"][0]["delta"]["images"] for c in chunks
              if "images" in c["choices"][0]["delta"]}
    assert sorted(images) == [0, 1]
    for index, parts in images.items():
        assert len(parts) == 1
        _decode_data_url(parts[0]["image_url"]["url"])
    stops = [c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert sorted(stops) == [0, 1]
    roles = [c["choices"][0]["index"] for c in chunks
             if c["choices"][0]["delta"].get("role") == "assistant"]
    assert sorted(roles) == [0, 1]


# --------------------------------------------------------------------------------------------
# 5. previews say the resolved values


def _sse_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[len("data: "):]) for line in text.splitlines()
            if line.startswith("data: ")]


async def test_previews_say_what_the_completed_event_says(shared_inprocess) -> None:
    srv = await shared_inprocess()
    body = {"model": MODEL, "prompt": "a fox", "stream": True, "partial_images": 2,
            "num_inference_steps": 3, "size": "auto"}  # quality, background: left to the model
    response = await srv.client.post("/v1/images/generations", json=body, headers=srv.auth())
    assert response.status_code == 200, response.text
    events = _sse_events(response.text)
    partials = [e for e in events if e["type"] == "image_generation.partial_image"]
    completed = [e for e in events if e["type"] == "image_generation.completed"]
    assert partials and len(completed) == 1
    assert completed[0]["quality"] == "medium" and completed[0]["background"] == "opaque"
    for partial in partials:
        for key in ("quality", "background", "size", "output_format"):
            assert partial[key] == completed[0][key], (key, partial[key], completed[0][key])


# --------------------------------------------------------------------------------------------
# 3. x-should-retry


async def test_errors_say_whether_a_retry_can_help(shared_inprocess) -> None:
    srv = await shared_inprocess()
    bad = await srv.client.post("/v1/images/generations", headers=srv.auth(),
                                json={"model": MODEL, "prompt": "x", "size": "nope"})
    assert bad.status_code == 400 and bad.headers["x-should-retry"] == "false"
    nobody = await srv.client.get("/v1/models", headers={"Authorization": "Bearer sk-nope"})
    assert nobody.status_code == 401 and nobody.headers["x-should-retry"] == "false"
    missing = await srv.client.post("/v1/images/generations", headers=srv.auth(),
                                    json={"model": "no-such", "prompt": "x"})
    assert missing.status_code == 404 and missing.headers["x-should-retry"] == "false"
    # sd-turbo's weights are not on this server: no retry brings them.
    weights = await srv.client.post("/v1/images/generations", headers=srv.auth(),
                                    json={"model": "sd-turbo", "prompt": "x"})
    assert weights.status_code == 503, weights.text
    assert weights.json()["error"]["code"] == "model_unavailable"
    assert weights.headers["x-should-retry"] == "false"
    ok = await srv.client.get("/v1/models", headers=srv.auth())
    assert "x-should-retry" not in ok.headers


async def test_openapi_documents_the_retry_header(shared_inprocess) -> None:
    srv = await shared_inprocess()
    document = (await srv.client.get("/openapi.json")).json()
    responses = document["paths"]["/v1/images/generations"]["post"]["responses"]
    for status in ("400", "404", "429", "503"):
        assert "x-should-retry" in responses[status]["headers"], status


async def test_limits_are_retryable_with_retry_after(shared_inprocess) -> None:
    srv = await shared_inprocess()
    account = await srv.client.post("/admin/accounts", headers=srv.auth(),
                                    json={"name": "slow"})
    assert account.status_code == 201, account.text
    created = await srv.client.post("/admin/keys", headers=srv.auth(), json={
        "account": "slow", "name": "slow", "rpm_limit": 1})
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    body = {"model": "no-such-model", "prompt": "x"}  # counted, then refused: no work to wait
    first = await srv.client.post("/v1/images/generations", json=body, headers=srv.auth(key))
    assert first.status_code == 404 and first.headers["x-should-retry"] == "false"
    limited = await srv.client.post("/v1/images/generations", json=body, headers=srv.auth(key))
    assert limited.status_code == 429, limited.text
    assert limited.headers["x-should-retry"] == "true"
    assert int(limited.headers["retry-after"]) >= 1


def test_retry_advice_by_status() -> None:
    for status in (500, 502, 503, 504):  # an upstream's or the server's passing failure
        assert dict(retry_headers(status, [])) == {b"x-should-retry": b"true",
                                                   b"retry-after": b"1"}
    measured = [(b"retry-after", b"7")]
    assert dict(retry_headers(429, measured)) == {b"x-should-retry": b"true"}  # its own wait
    for status in (400, 401, 402, 403, 404, 409, 413):
        assert dict(retry_headers(status, [])) == {b"x-should-retry": b"false"}
    assert retry_headers(200, []) == []
    # Missing weights: never; every deployment cooling down: after the cool-down.
    assert ModelUnavailable("no weights").response_headers()["x-should-retry"] == "false"
    cooling = ModelUnavailable("cooling", headers={"retry-after": "5"}).response_headers()
    assert cooling == {"retry-after": "5", "x-should-retry": "true"}
    # A retry under the same Idempotency-Key replays the first answer once it is done.
    running = APIError("still running", status=409, code="idempotency_key_in_progress")
    assert running.response_headers()["x-should-retry"] == "true"
    said = [(b"x-should-retry", b"false")]
    assert retry_headers(503, said) == []


def test_sdk_does_not_retry_missing_weights(start_server) -> None:
    """The real openai SDK, with its default retries, against a real server: one request."""
    admin = "sk-ig-" + "retry-admin-key-0000000000000000"
    server = start_server(auth="on", admin_key=admin)
    client = openai.OpenAI(base_url=server.api_url, api_key=admin, max_retries=3, timeout=60)
    with pytest.raises(openai.InternalServerError) as failed:
        client.images.generate(model="sd-turbo", prompt="a fox")
    assert failed.value.status_code == 503
    rows = httpx.get(server.base_url + "/admin/usage", params={"model": "sd-turbo"},
                     headers={"Authorization": f"Bearer {admin}"}, timeout=30).json()["data"]
    assert [row["status"] for row in rows] == [503]


# --------------------------------------------------------------------------------------------
# 6. /v1/models availability, and the field named for too many images


async def test_models_mark_what_cannot_serve(shared_inprocess) -> None:
    srv = await shared_inprocess()
    cards = {c["id"]: c for c in (await srv.client.get("/v1/models",
                                                       headers=srv.auth())).json()["data"]}
    assert cards["tiny-sd"]["imagegate"]["available"] is True
    assert cards["sd-turbo"]["imagegate"]["available"] is False  # weights missing
    assert cards["sd-turbo"]["imagegate"]["weights"] == "missing"
    assert {"id", "object", "created", "owned_by"} <= set(cards["sd-turbo"])


async def test_unavailable_models_can_be_hidden(shared_inprocess) -> None:
    srv = await shared_inprocess(list_unavailable_models=False)
    listed = {c["id"] for c in (await srv.client.get("/v1/models",
                                                     headers=srv.auth())).json()["data"]}
    assert "tiny-sd" in listed and "sd-turbo" not in listed and "flux-schnell" not in listed
    one = await srv.client.get("/v1/models/sd-turbo", headers=srv.auth())
    assert one.status_code == 200 and one.json()["imagegate"]["available"] is False


async def test_too_many_images_names_the_field(shared_inprocess) -> None:
    """tiny-sd takes one input image; each form of sending two is refused by its own name."""
    srv = await shared_inprocess()
    png = _png()

    async def edit(files: list[tuple[str, Any]]) -> dict[str, Any]:
        response = await srv.client.post("/v1/images/edits", headers=srv.auth(), files=files,
                                         data={"model": MODEL, "prompt": "x"})
        assert response.status_code == 400, response.text
        return response.json()["error"]

    two = ("a.png", png, "image/png"), ("b.png", png, "image/png")
    assert (await edit([("image[]", f) for f in two]))["param"] == "image[]"  # the SDKs' form
    assert (await edit([("image", f) for f in two]))["param"] == "image"
    response = await srv.client.post("/v1/images/edits", headers=srv.auth(), json={
        "model": MODEL, "prompt": "x", "images": [{"image_url": _data_url(png)}] * 2})
    assert response.json()["error"]["param"] == "images"

    parts = [{"type": "text", "text": "x"}] + [
        {"type": "image_url", "image_url": {"url": _data_url(png)}}] * 2
    response = await srv.client.post("/v1/chat/completions", headers=srv.auth(), json={
        "model": MODEL, "messages": [{"role": "user", "content": parts}]})
    assert response.json()["error"]["param"] == "messages"
    response = await srv.client.post("/v1/chat/completions", headers=srv.auth(), json={
        "model": MODEL, "messages": [{"role": "user", "content": "x"}],
        "image_config": {"reference_images": [_data_url(png)] * 2}})
    assert response.json()["error"]["param"] == "image_config.reference_images"
