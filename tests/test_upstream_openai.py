"""Relaying to OpenAI-compatible upstreams, through real servers: the `openai_images` wire format
(OpenAI's Images API, Azure OpenAI, another imagegate) and `openai_chat` (chat completions with
image output: OpenRouter's `message.images[]`, new-api's markdown data URLs).

A fake upstream (a FastAPI app on a free loopback port) speaks both formats; each test switches
it to one behaviour: success (base64 or a link to an image on the same fake host), 500, 429 with
Retry-After, an answer slower than the deployment's 1 s timeout, malformed JSON, truncated
base64, no image, a safety block, an image over the gateway's 50,000-byte cap. The gateway runs
with keys on and a prepaid account, so each test also checks the money: charged the list price
on success, unchanged on failure.
"""

from __future__ import annotations

import asyncio
import base64
import io
import random
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from gateway import ADMIN_KEY, TIMEOUT, Gateway
from PIL import Image
from png_chunks import passed_on
from starlette.datastructures import UploadFile
from upstream_server import serve_app

if TYPE_CHECKING:
    from conftest import Server

UPSTREAM_KEY = "sk-fake-upstream-secret-7f3a9c"
AZURE_KEY = "azure-fake-secret-51b2e8"
REQUEST_ID = "req-upstream-4242"
MAX_IMAGE_BYTES = 50_000
DALLE3_MICROS = 40_000  # dall-e-3 1024x1024 standard: $0.04
GEMINI_MICROS = 39_000  # gemini-2.5-flash-image: $0.039


def _png(width: int, height: int, color: tuple[int, ...] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def _noise_png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    noise = random.Random(7).randbytes(width * height * 3)  # incompressible
    Image.frombytes("RGB", (width, height), noise).save(out, format="PNG")
    return out.getvalue()


SMALL_PNG = _png(16, 16)
BIG_PNG = _noise_png(160, 160)
assert len(BIG_PNG) > MAX_IMAGE_BYTES


# --------------------------------------------------------------------------------------------
# the fake upstream


class Fake:
    """The fake's behaviour (`mode`) and what it received."""

    def __init__(self) -> None:
        self.mode = "b64"
        self.requests: list[dict[str, Any]] = []
        self.base = ""

    def reset(self, mode: str = "b64") -> None:
        self.mode = mode
        self.requests = []

    def posts(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST"]


FAKE = Fake()


async def _record(request: Request) -> dict[str, Any]:
    entry: dict[str, Any] = {"method": request.method, "path": request.url.path,
                             "query": dict(request.query_params),
                             "headers": dict(request.headers)}
    if request.method == "POST":
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            fields, parts = {}, []
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    parts.append((name, value.content_type, await value.read()))
                else:
                    fields[name] = value
            entry.update(form=fields, parts=parts)
        else:
            entry["json"] = await request.json()
    FAKE.requests.append(entry)
    return entry


def _error(status: int, message: str, type_: str, code: str | None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": None,
                                   "code": code}}, status_code=status, headers=headers)


async def _common_failure(request: Request) -> Response | None:
    """The failure modes both formats share."""
    mode = FAKE.mode
    if mode == "500":
        return _error(500, "The server had an error while processing your request.",
                      "server_error", None)
    if mode == "429":
        return _error(429, "Rate limit reached for images per minute.", "requests",
                      "rate_limit_exceeded", headers={"Retry-After": "1"})
    if mode == "malformed":
        return Response(b'{"created": 1, "data": [{"b64_json": "iVBOR', status_code=200,
                        media_type="application/json")
    if mode == "slow":
        await asyncio.sleep(2.5)
    return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _image_payload(request: Request) -> tuple[str, str]:
    """('b64' | 'url', value) for the current mode."""
    mode = FAKE.mode
    if mode == "url":
        return "url", f"{request.base_url}files/small.png"
    if mode == "big_url":
        return "url", f"{request.base_url}files/big.png"
    if mode == "big":
        return "b64", _b64(BIG_PNG)
    if mode == "truncated":
        return "b64", _b64(SMALL_PNG)[: len(_b64(SMALL_PNG)) // 2 + 1]
    return "b64", _b64(SMALL_PNG)


def fake_app() -> FastAPI:
    app = FastAPI()

    async def images(request: Request) -> Response:
        entry = await _record(request)
        failure = await _common_failure(request)
        if failure is not None:
            return failure
        if FAKE.mode == "safety":
            return _error(400, "Your request was rejected as a result of our safety system. "
                          "Your prompt may contain text that is not allowed by our safety "
                          "system.", "invalid_request_error", "content_policy_violation")
        if FAKE.mode == "moderation":
            return _error(400, "Your request was rejected by the safety system.",
                          "image_generation_user_error", "moderation_blocked")
        if FAKE.mode == "empty":
            return JSONResponse({"created": 1, "data": []}, headers={"x-request-id": REQUEST_ID})
        prompt = (entry.get("json") or entry.get("form") or {}).get("prompt", "")
        kind, value = _image_payload(request)
        item = {"b64_json": value} if kind == "b64" else {"url": value}
        item["revised_prompt"] = f"upstream revised: {prompt}"
        return JSONResponse({"created": 1, "data": [item]}, headers={"x-request-id": REQUEST_ID})

    app.post("/v1/images/generations")(images)
    app.post("/v1/images/edits")(images)
    app.post("/openai/deployments/{deployment}/images/generations")(images)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        await _record(request)
        failure = await _common_failure(request)
        if failure is not None:
            return failure
        mode = FAKE.mode
        message: dict[str, Any] = {"role": "assistant", "content": "Here is your picture."}
        finish = "stop"
        if mode == "safety":
            message["content"], finish = None, "content_filter"
        elif mode == "empty":
            message["content"] = "I would rather describe it in words."
        elif mode in ("markdown", "markdown_url"):  # new-api: the image inline in the text
            url = (f"{request.base_url}files/small.png" if mode == "markdown_url"
                   else "data:image/png;base64," + _b64(SMALL_PNG))
            message["content"] = f"Here is your picture.\n![image]({url})"
        else:
            kind, value = _image_payload(request)
            url = value if kind == "url" else "data:image/png;base64," + value
            message["images"] = [{"type": "image_url", "image_url": {"url": url}}]
        return JSONResponse({
            "id": "gen-fake-1", "object": "chat.completion", "created": 1,
            "model": "google/gemini-2.5-flash-image",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 1290, "total_tokens": 1297}},
            headers={"x-request-id": REQUEST_ID})

    @app.get("/files/{name}")
    async def files(name: str, request: Request) -> Response:
        await _record(request)
        return Response(BIG_PNG if name == "big.png" else SMALL_PNG, media_type="image/png")

    return app


# --------------------------------------------------------------------------------------------
# the gateway under test


def gateway_config(upstream: str) -> str:
    return f"""
[models.dall-e-3]
[[models.dall-e-3.deployments]]
provider = "openai_images"
base_url = "{upstream}/v1"
upstream_model = "dalle3-deployed"
api_key_env = "FAKE_UPSTREAM_KEY"
timeout_seconds = 1

[models.dall-e-2]
[[models.dall-e-2.deployments]]
provider = "openai_images"
base_url = "{upstream}/v1"
api_key_env = "FAKE_UPSTREAM_KEY"
timeout_seconds = 5

[models.gpt-image-1]
[[models.gpt-image-1.deployments]]
provider = "openai_images"
base_url = "{upstream}/v1"
api_key_env = "FAKE_UPSTREAM_KEY"
timeout_seconds = 5

[models.azure-dalle]
backend = "upstream"
[models.azure-dalle.capabilities]
sizes = ["1024x1024"]
max_n = 1
[models.azure-dalle.pricing]
per_image = "0.04"
[[models.azure-dalle.deployments]]
provider = "openai_images"
base_url = "{upstream}"
upstream_model = "my-dalle"
api_version = "2024-10-21"
api_key_env = "FAKE_AZURE_KEY"
timeout_seconds = 5

[models."gemini-2.5-flash-image"]
[[models."gemini-2.5-flash-image".deployments]]
provider = "openai_chat"
base_url = "{upstream}/v1"
upstream_model = "google/gemini-2.5-flash-image"
api_key_env = "FAKE_UPSTREAM_KEY"
timeout_seconds = 1
"""


class Relay(Gateway):
    """The shared gateway, with the fake upstream's address and account `relay`'s key (`client`:
    its API at /v1, as that key's holder)."""

    def __init__(self, server: Server, fake_base: str) -> None:
        super().__init__(server)
        self.fake_base = fake_base
        self.key = self.funded_key("relay", 100_000_000)
        self.client = httpx.Client(base_url=server.api_url, timeout=TIMEOUT,
                                   headers={"Authorization": f"Bearer {self.key}"})

    def close(self) -> None:
        self.client.close()
        super().close()

    def relay(self, model: str, **body: Any) -> httpx.Response:
        return self.client.post("/images/generations",
                                json={"model": model, "prompt": "a red square", **body})


@pytest.fixture(scope="module")
def gateway(start_server: Any) -> Iterator[Relay]:
    with serve_app(fake_app()) as fake_base, pytest.MonkeyPatch.context() as mp:
        FAKE.base = fake_base
        mp.setenv("FAKE_UPSTREAM_KEY", UPSTREAM_KEY)
        mp.setenv("FAKE_AZURE_KEY", AZURE_KEY)
        server = start_server(gateway_config(fake_base), auth="on", admin_key=ADMIN_KEY,
                              upstream_max_image_bytes=str(MAX_IMAGE_BYTES),
                              upstream_cooldown_seconds="0")
        gateway = Relay(server, fake_base)
        yield gateway
        gateway.close()


@pytest.fixture
def fake(gateway: Relay) -> Fake:
    FAKE.reset()
    return FAKE


def _assert_no_leak(gateway: Relay, response: httpx.Response) -> None:
    text = response.text
    port = gateway.fake_base.rsplit(":", 1)[1]
    for secret in ("127.0.0.1", "localhost", port, UPSTREAM_KEY, AZURE_KEY, "FAKE_UPSTREAM_KEY",
                   "/v1/images", "chat/completions"):
        assert secret not in text, (secret, text)


def _decoded(response: httpx.Response) -> bytes:
    return base64.b64decode(response.json()["data"][0]["b64_json"])


# --------------------------------------------------------------------------------------------
# openai_images: success


def test_images_b64_success_charges_and_maps_the_model(gateway: Relay, fake: Fake) -> None:
    before = gateway.account("relay")["balance_micros"]
    response = gateway.relay("dall-e-3", response_format="b64_json", user="end-user-1")
    assert response.status_code == 200, response.text
    assert passed_on(_decoded(response), SMALL_PNG)  # the upstream's PNG, plus its labels
    assert response.json()["data"][0]["revised_prompt"] == "upstream revised: a red square"

    [sent] = fake.posts()
    assert sent["path"] == "/v1/images/generations"
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent["json"] == {"model": "dalle3-deployed", "prompt": "a red square", "n": 1,
                            "size": "1024x1024", "quality": "standard", "style": "vivid",
                            "response_format": "b64_json", "user": "end-user-1"}

    account = gateway.account("relay")
    assert account["balance_micros"] == before - DALLE3_MICROS
    assert account["held_micros"] == 0
    row = gateway.usage_row("relay", response.headers["x-request-id"])
    assert row["status"] == 200 and row["cost_micros"] == DALLE3_MICROS
    assert row["deployment"] == "openai_images/dalle3-deployed"
    assert row["upstream_request_id"] == REQUEST_ID


def test_images_url_answer_is_rehosted(gateway: Relay, fake: Fake) -> None:
    fake.reset("url")
    before = gateway.account("relay")["balance_micros"]
    response = gateway.relay("dall-e-3", response_format="url")
    assert response.status_code == 200, response.text
    url = response.json()["data"][0]["url"]
    assert url.startswith(gateway.base_url + "/v1/media/")  # ours, not the upstream's link
    assert gateway.fake_base not in response.text
    image = Image.open(io.BytesIO(httpx.get(url, timeout=10).content))
    assert image.size == (16, 16) and image.convert("RGB").getpixel((0, 0)) == (200, 30, 30)
    assert [r["path"] for r in fake.requests] == ["/v1/images/generations", "/files/small.png"]
    assert gateway.account("relay")["balance_micros"] == before - DALLE3_MICROS


def test_gpt_image_upstream_gets_no_response_format(gateway: Relay, fake: Fake) -> None:
    response = gateway.relay("gpt-image-1", response_format="b64_json",
                             background="transparent", quality="low")
    assert response.status_code == 200, response.text
    [sent] = fake.posts()
    assert sent["json"] == {"model": "gpt-image-1", "prompt": "a red square", "n": 1,
                            "size": "1024x1024", "quality": "low", "background": "transparent"}


def test_azure_path_and_api_key_header(gateway: Relay, fake: Fake) -> None:
    response = gateway.relay("azure-dalle", response_format="b64_json")
    assert response.status_code == 200, response.text
    [sent] = fake.posts()
    assert sent["path"] == "/openai/deployments/my-dalle/images/generations"
    assert sent["query"] == {"api-version": "2024-10-21"}
    assert sent["headers"]["api-key"] == AZURE_KEY
    assert "authorization" not in sent["headers"]
    row = gateway.usage_row("relay", response.headers["x-request-id"])
    assert row["upstream_request_id"] == REQUEST_ID


def test_edits_are_relayed_as_multipart(gateway: Relay, fake: Fake) -> None:
    one, two = _png(64, 64, (0, 0, 255)), _png(64, 64, (0, 255, 0))
    mask_image = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask_image.paste((0, 0, 0, 0), (0, 0, 32, 64))  # left half transparent: edit there
    buffer = io.BytesIO()
    mask_image.save(buffer, format="PNG")
    response = gateway.client.post("/images/edits", data={
        "model": "gpt-image-1", "prompt": "paint it", "size": "1024x1024",
        "response_format": "b64_json"}, files=[
        ("image[]", ("a.png", one, "image/png")), ("image[]", ("b.png", two, "image/png")),
        ("mask", ("m.png", buffer.getvalue(), "image/png"))])
    assert response.status_code == 200, response.text
    assert passed_on(_decoded(response), SMALL_PNG)

    [sent] = fake.posts()
    assert sent["path"] == "/v1/images/edits"
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent["form"] == {"model": "gpt-image-1", "prompt": "paint it", "n": "1",
                            "size": "1024x1024", "quality": "auto"}
    assert [(name, kind) for name, kind, _ in sent["parts"]] == [
        ("image[]", "image/png"), ("image[]", "image/png"), ("mask", "image/png")]
    images = [Image.open(io.BytesIO(data)) for _, _, data in sent["parts"]]
    assert all(image.format == "PNG" for image in images)
    assert images[0].convert("RGB").getpixel((5, 5)) == (0, 0, 255)
    assert images[1].convert("RGB").getpixel((5, 5)) == (0, 255, 0)
    assert images[2].mode == "RGBA"
    assert images[2].getpixel((5, 5))[3] == 0 and images[2].getpixel((60, 5))[3] == 255

    # One image (dall-e-2): a part named `image`, and response_format is sent. A mask without
    # alpha (white = edit, as the local engine reads it) arrives in OpenAI's convention.
    fake.reset()
    gray = Image.new("L", (64, 64), 0)
    gray.paste(255, (32, 0, 64, 64))  # right half white: edit there
    buffer = io.BytesIO()
    gray.save(buffer, format="PNG")
    response = gateway.client.post("/images/edits", data={
        "model": "dall-e-2", "prompt": "paint it", "size": "256x256"},
        files=[("image", ("a.png", one, "image/png")),
               ("mask", ("m.png", buffer.getvalue(), "image/png"))])
    assert response.status_code == 200, response.text
    [sent] = fake.posts()
    assert [name for name, _, _ in sent["parts"]] == ["image", "mask"]
    mask = Image.open(io.BytesIO(sent["parts"][1][2]))
    assert mask.mode == "RGBA" and mask.getpixel((5, 5))[3] == 255
    assert mask.getpixel((60, 5))[3] == 0
    assert sent["form"]["response_format"] == "b64_json"
    assert sent["form"]["model"] == "dall-e-2" and sent["form"]["size"] == "256x256"


# --------------------------------------------------------------------------------------------
# failures, both formats: status, error body, no leak, no charge

FAILURES = [
    # mode, status, type, code
    ("500", 502, "upstream_error", "upstream_error"),
    ("429", 502, "upstream_error", "upstream_error"),
    ("slow", 502, "upstream_error", "upstream_timeout"),
    ("malformed", 502, "upstream_error", "upstream_bad_response"),
    ("truncated", 502, "upstream_error", "upstream_bad_response"),
    ("empty", 502, "upstream_error", "upstream_bad_response"),
    ("safety", 400, "invalid_request_error", "content_policy_violation"),
    ("big", 502, "upstream_error", "upstream_bad_response"),
    ("big_url", 502, "upstream_error", "upstream_bad_response"),
]
CASES = [pytest.param("dall-e-3", *case, id=f"images-{case[0]}") for case in FAILURES] + [
    pytest.param("dall-e-3", "moderation", 400, "invalid_request_error",
                 "content_policy_violation", id="images-moderation_blocked")] + [
    pytest.param("gemini-2.5-flash-image", *case, id=f"chat-{case[0]}") for case in FAILURES]


@pytest.mark.parametrize("model,mode,status,type_,code", CASES)
def test_upstream_failure(gateway: Relay, fake: Fake, model: str, mode: str, status: int,
                          type_: str, code: str) -> None:
    fake.reset(mode)
    before = gateway.account("relay")
    started = time.monotonic()
    response = gateway.relay(model, response_format="b64_json")

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == (type_, code), error
    assert "upstream provider" in error["message"]
    _assert_no_leak(gateway, response)
    assert len(fake.posts()) == 1  # one deployment: nothing else to try

    after = gateway.account("relay")
    assert after["balance_micros"] == before["balance_micros"]
    assert after["held_micros"] == 0
    row = gateway.usage_row("relay", response.headers["x-request-id"])
    assert (row["status"], row["error_code"], row["cost_micros"]) == (status, code, 0)

    if mode == "429":  # Retry-After: 1 cools the only deployment down for a second
        again = gateway.relay(model, response_format="b64_json")
        if time.monotonic() - started < 1:  # else a busy machine let the second pass
            assert again.status_code == 503, again.text
            assert len(fake.posts()) == 1
        time.sleep(1.1)
        fake.reset()
        assert gateway.relay(model, response_format="b64_json").status_code == 200


# --------------------------------------------------------------------------------------------
# openai_chat: success


def test_chat_images_n2_two_calls_with_aspect_ratio(gateway: Relay, fake: Fake) -> None:
    before = gateway.account("relay")["balance_micros"]
    response = gateway.relay("gemini-2.5-flash-image", size="1344x768", n=2,
                             response_format="b64_json")
    assert response.status_code == 200, response.text
    assert [passed_on(base64.b64decode(d["b64_json"]), SMALL_PNG)
            for d in response.json()["data"]] == [True, True]
    sent = fake.posts()
    assert len(sent) == 2
    for call in sent:
        assert call["path"] == "/v1/chat/completions"
        assert call["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert call["json"] == {
            "model": "google/gemini-2.5-flash-image",
            "messages": [{"role": "user", "content": "a red square"}],
            "modalities": ["image", "text"], "image_config": {"aspect_ratio": "16:9"}}
    assert gateway.account("relay")["balance_micros"] == before - 2 * GEMINI_MICROS
    row = gateway.usage_row("relay", response.headers["x-request-id"])
    assert row["deployment"] == "openai_chat/google/gemini-2.5-flash-image"
    assert row["upstream_request_id"] == REQUEST_ID


@pytest.mark.parametrize("mode", ["markdown", "markdown_url", "url"])
def test_chat_image_forms(gateway: Relay, fake: Fake, mode: str) -> None:
    fake.reset(mode)
    response = gateway.relay("gemini-2.5-flash-image", response_format="b64_json")
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(_decoded(response)))
    assert image.size == (16, 16) and image.convert("RGB").getpixel((1, 1)) == (200, 30, 30)


def test_chat_references_are_sent_as_data_urls(gateway: Relay, fake: Fake) -> None:
    response = gateway.client.post("/images/edits", data={
        "model": "gemini-2.5-flash-image", "prompt": "make it blue", "size": "832x1248",
        "response_format": "b64_json"},
        files=[("image", ("a.png", _png(32, 48, (1, 2, 3)), "image/png"))])
    assert response.status_code == 200, response.text
    [sent] = fake.posts()
    assert sent["json"]["image_config"] == {"aspect_ratio": "2:3"}
    text, picture = sent["json"]["messages"][0]["content"]
    assert text == {"type": "text", "text": "make it blue"}
    url = picture["image_url"]["url"]
    assert picture["type"] == "image_url" and url.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert image.size == (32, 48) and image.convert("RGB").getpixel((0, 0)) == (1, 2, 3)


def test_chat_answer_parsing() -> None:
    """The text beside the images, and refusals, straight from the adapter's parser."""
    from imagegate.aspect_ratios import nearest_ratio
    from imagegate.providers.upstream.openai_chat import _image_sources, _refused

    data = "data:image/png;base64," + _b64(SMALL_PNG)
    sources, text = _image_sources({"content": f"Here you go.\n\n![image]({data})\nEnjoy"})
    assert sources == [data] and text == "Here you go.\n\nEnjoy"
    sources, text = _image_sources({"content": "Done.", "images": [
        {"type": "image_url", "image_url": {"url": data}}, {"imageUrl": {"url": data}}]})
    assert sources == [data, data] and text == "Done."
    sources, text = _image_sources({"content": [{"type": "text", "text": "parts"},
                                                {"type": "image_url", "image_url": data}]})
    assert sources == [data] and text == "parts"
    assert _image_sources({"content": None}) == ([], None)
    assert _refused({"finish_reason": "content_filter"}, {})
    assert _refused({"finish_reason": "stop"}, {"refusal": "I can't help with that."})
    assert _refused({"finish_reason": "stop", "native_finish_reason": "IMAGE_SAFETY"}, {})
    assert not _refused({"finish_reason": "stop"}, {"content": "no"})
    assert [nearest_ratio(*s) for s in ((1024, 1024), (1792, 1024), (1024, 1792), (64, 64),
                                       (1600, 700), (880, 1100))] == \
        ["1:1", "16:9", "9:16", "1:1", "21:9", "4:5"]


async def test_image_links_share_the_routers_client_and_downloader(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Upstream answers with links: every image of every request is fetched and decoded through
    the router's one downloader (one guarded fetcher, one HTTP client), none made per image."""
    from imagegate.catalog import Deployment, ModelSpec
    from imagegate.generation import ResolvedRequest
    from imagegate.net import safe_fetch
    from imagegate.providers.upstream.router import UpstreamRouter

    app = FastAPI()
    fetched: list[str] = []

    @app.post("/v1/images/generations")
    async def generations(request: Request) -> Any:
        n = (await request.json())["n"]
        return {"created": 1, "data": [{"url": f"{request.base_url}files/{i}.png"}
                                       for i in range(n)]}

    @app.get("/files/{name}")
    async def file(name: str) -> Response:
        fetched.append(name)
        return Response(_png(8, 8, (10, 20, 30)), media_type="image/png")

    fetchers: list[object] = []
    original_init = safe_fetch.SafeFetcher.__init__

    def counting_init(self: Any, **kw: Any) -> None:
        fetchers.append(self)
        original_init(self, **kw)

    monkeypatch.setattr(safe_fetch.SafeFetcher, "__init__", counting_init)
    clients: list[object] = []
    original_client_init = httpx.AsyncClient.__init__

    def counting_client_init(self: Any, *args: Any, **kw: Any) -> None:
        clients.append(self)
        original_client_init(self, *args, **kw)

    with serve_app(app) as base:
        spec = ModelSpec(name="dall-e-2", backend="upstream", deployments=[Deployment(
            provider="openai_images", base_url=f"{base}/v1", timeout_seconds=30)])
        router = UpstreamRouter()
        assert len(fetchers) == 1
        monkeypatch.setattr(httpx.AsyncClient, "__init__", counting_client_init)
        try:
            for prompt in ("a lighthouse", "a harbour"):
                request = ResolvedRequest(
                    model="dall-e-2", prompt=prompt, n=3, width=256, height=256, quality=None,
                    style=None, background="opaque", seeds=[1, 2, 3], num_inference_steps=None,
                    guidance_scale=None, negative_prompt=None)
                result = await router.generate(spec, request)
                assert [image.image.size for image in result.images] == [(8, 8)] * 3
        finally:
            await router.aclose()
    assert sorted(fetched) == ["0.png", "0.png", "1.png", "1.png", "2.png", "2.png"]
    assert len(fetchers) == 1 and clients == []


# --------------------------------------------------------------------------------------------
# one imagegate relaying to another


def test_relay_to_a_second_imagegate(start_server: Any) -> None:
    b = start_server()  # serves tiny-sd, keys off
    assert httpx.get(b.base_url + "/health").json()["models"]["tiny-sd"]["loaded"] is False
    a = start_server(f"""
[models.relayed-sd]
backend = "upstream"
[models.relayed-sd.capabilities]
size_rule = {{ multiple_of = 8, min_edge = 64, max_edge = 512 }}
default_size = "64x64"
[[models.relayed-sd.deployments]]
provider = "openai_images"
base_url = "{b.api_url}"
upstream_model = "tiny-sd"
timeout_seconds = 60
""")
    client = openai.OpenAI(base_url=a.api_url, api_key="unused", max_retries=0)
    result = client.images.generate(model="relayed-sd", prompt="a lighthouse", size="64x64",
                                    response_format="url")
    url = result.data[0].url
    assert url is not None and url.startswith(a.base_url + "/v1/media/")
    image = Image.open(io.BytesIO(httpx.get(url, timeout=10).content))
    assert image.format == "PNG" and image.size == (64, 64)
    assert httpx.get(b.base_url + "/health").json()["models"]["tiny-sd"]["loaded"] is True
